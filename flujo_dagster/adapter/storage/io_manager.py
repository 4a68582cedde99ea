"""`PydanticJsonIOManager`: every context key stored as JSON in a small typed envelope, run-scoped."""

from __future__ import annotations

from functools import cache
from typing import Any, Generic, Literal, TypeVar

from dagster import (
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    DagsterType,
    InputContext,
    MetadataValue,
    OutputContext,
)
from pydantic import BaseModel, TypeAdapter, ValidationError
from upath import UPath

from flujo_dagster import names
from flujo_dagster.adapter.storage.types import KeyType
from flujo_dagster.errors import StorageError
from flujo_dagster.runtime.values import adapter_for, from_json, jsonable, to_json_bytes
from flujo_dagster.validation.typecompat import type_name

__all__ = ["ENVELOPE_VERSION", "PydanticJsonIOManager", "StoredKey", "dump_envelope", "read_envelope", "write_file"]

ENVELOPE_VERSION = 1
_NO_RUN = "__EPHEMERAL_RUN_ID"
"""The run id Dagster gives an upstream output it did not produce in this run (its RUN_ID_PLACEHOLDER)."""
T = TypeVar("T")


class _Envelope(BaseModel, Generic[T]):
    flujo: Literal[1]
    key: str
    type: str
    value: T


@cache
def _envelope_adapter(annotation: object) -> TypeAdapter[_Envelope[object]]:
    return TypeAdapter(_Envelope[annotation])  # type: ignore[valid-type]


class StoredKey:
    """What the IO manager needs to know of a stored value: its key name and declared annotation."""

    __slots__ = ("adapter", "annotation", "check_key", "key")

    def __init__(self, key: str, annotation: object, *, check_key: bool = True) -> None:
        self.key = key
        self.annotation = annotation
        self.adapter = adapter_for(annotation)
        self.check_key = check_key
        """When True, `read` refuses a file that holds another key (a file copied into the wrong place)."""

    @classmethod
    def of(cls, dagster_type: DagsterType, fallback_key: str) -> StoredKey:
        """From a flujo `KeyType`, or from any Dagster type by its Python typing type (key not checked)."""
        if isinstance(dagster_type, KeyType):
            return cls(dagster_type.context_key, dagster_type.annotation)
        return cls(fallback_key, dagster_type.typing_type, check_key=False)


def _declared_type(context: InputContext, upstream: OutputContext) -> DagsterType:
    """The type the producer stored its value with (fan-in elements keep theirs), else the input's own type.

    That is the producer's flujo type, or any other producer type that is not `Any` (the value was written
    with it; in a fan-in the input's own type is the list, not the element's). Outside a run
    (`Definitions.load_asset_value`) the producer's type is not available: the input's type is used, which
    is `python_type=` when the caller passes one.
    """
    try:
        produced = upstream.dagster_type
    except DagsterInvariantViolationError:
        return context.dagster_type
    if isinstance(produced, KeyType) or produced.typing_type is not Any:
        return produced
    return context.dagster_type


def dump_envelope(stored: StoredKey, value: object) -> bytes:
    """The envelope bytes for `value`."""
    py = jsonable(stored.adapter, value)
    envelope = {
        "flujo": ENVELOPE_VERSION,
        "key": stored.key,
        "type": type_name(stored.annotation),
        "value": py,
    }
    return to_json_bytes(envelope)


def write_file(path: UPath, data: bytes) -> None:
    """Write bytes, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read_envelope(path: UPath, stored: StoredKey, *, where: str) -> object:
    """Load and validate the value at `path`. `where` names the run and step for error messages."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise StorageError(
            f"no stored value for key {stored.key!r} ({where}) at {path}: the file is missing. "
            "Re-run the step that writes it (re-execute the run from failure)."
        ) from exc
    try:
        envelope = from_json(_envelope_adapter(stored.annotation), raw)
    except ValidationError as exc:
        raise _unreadable(exc, path, stored, where) from exc
    if stored.check_key and envelope.key != stored.key:
        raise StorageError(
            f"stored file {path} ({where}) holds key {envelope.key!r}, not {stored.key!r}: it was copied or "
            "moved by hand. Put the right file back, or delete it and re-execute the step that writes it."
        )
    return envelope.value


def _unreadable(exc: ValidationError, path: UPath, stored: StoredKey, where: str) -> StorageError:
    """Why a stored file did not validate: its value no longer matches the declared type, or it is no envelope."""
    errors = exc.errors()
    if all(e["loc"][:1] == ("value",) for e in errors) and not any(
        e["loc"] == ("value",) and e["type"] == "missing" for e in errors
    ):
        return StorageError(
            f"stored value of key {stored.key!r} ({where}) at {path} no longer matches its declared "
            f"type {type_name(stored.annotation)}: {exc}. Fix or delete the file and re-execute the "
            "step, or change the context field back."
        )
    return StorageError(
        f"stored value of key {stored.key!r} ({where}) at {path} is corrupt (not a flujo_dagster "
        f"JSON envelope): {exc.errors()[0]['msg']}. Delete the file and re-execute the step that "
        "wrote it."
    )


class PydanticJsonIOManager(ConfigurableIOManager):
    """Stores each op output as JSON at `<base_dir>/<run_id>/<step_key>/<output>[/<mapping_key>].json`.

    Values are written with pydantic (NaN and infinities kept) inside an envelope naming the key, the
    type and the format version, and loaded back as exactly the declared type. Outputs that are assets are
    also copied to `<base_dir>/assets/<asset key>.json` for loads outside a run; loads inside a run (and
    its re-executions) always read the run-scoped copy. It writes no log event of its own. No pickle.
    `base_dir` defaults to `<instance storage directory>/flujo`; any UPath URL works (s3://, memory://...).
    """

    base_dir: str | None = None

    # -- paths ---------------------------------------------------------------------------------------
    def root(self, storage_directory: str) -> UPath:
        """The storage root, given the instance's storage directory."""
        return UPath(self.base_dir) if self.base_dir else UPath(storage_directory) / "flujo"

    @staticmethod
    def output_path(root: UPath, run_id: str, step_key: str, output_name: str, mapping_key: str | None = None) -> UPath:
        """Where one op output lives."""
        path = root / run_id / step_key / output_name
        return (path / f"{mapping_key}.json") if mapping_key else path.with_name(f"{output_name}.json")

    @staticmethod
    def asset_path(root: UPath, asset_path: list[str], partition: str | None = None) -> UPath:
        """Where the latest value of an asset (of one partition) lives (for loads outside a run)."""
        *parents, last = asset_path
        if partition is not None:
            return root.joinpath("assets", *parents, last, f"{partition}.json")
        return root.joinpath("assets", *parents, f"{last}.json")

    # -- values ------------------------------------------------------------------------------------------
    @staticmethod
    def dump(stored: StoredKey, value: object) -> bytes:
        """The envelope bytes for `value` (`dump_envelope`)."""
        return dump_envelope(stored, value)

    @staticmethod
    def write(path: UPath, data: bytes) -> None:
        """Write bytes, creating parent folders (`write_file`)."""
        write_file(path, data)

    @staticmethod
    def read(path: UPath, stored: StoredKey, *, where: str) -> object:
        """Load and validate the value at `path`; `where` names the run and step for errors (`read_envelope`)."""
        return read_envelope(path, stored, where=where)

    # -- Dagster's IO manager interface ---------------------------------------------------------------
    def handle_output(self, context: OutputContext, obj: object) -> None:
        """Store `obj`; adds the path as output metadata (no extra event)."""
        stored = StoredKey.of(context.dagster_type, context.name)
        root = self.root(context.step_context.instance.storage_directory())
        data = self.dump(stored, obj)
        path = self.output_path(root, context.run_id, context.step_key, context.name, context.mapping_key)
        self.write(path, data)
        metadata = {names.PATH: MetadataValue.path(str(path))}
        if context.has_asset_key:
            partition = context.asset_partition_key if context.has_asset_partitions else None
            asset_file = self.asset_path(root, list(context.asset_key.path), partition)
            self.write(asset_file, data)
        context.add_output_metadata(metadata)

    def load_input(self, context: InputContext) -> object:
        """Load the producer's value as the producer's declared type (fan-in elements included)."""
        upstream = context.upstream_output
        if upstream is None:
            raise StorageError(
                f"input {context.name!r} of step {context.step_context.step.key} has no upstream output; "
                "the flujo IO manager only loads values that ops produced."
            )
        stored = StoredKey.of(_declared_type(context, upstream), upstream.name)
        path, where = _source(context, upstream, self.root(context.instance.storage_directory()))
        return self.read(path, stored, where=where)


def _source(context: InputContext, upstream: OutputContext, root: UPath) -> tuple[UPath, str]:
    """Where the value of `context`'s input is stored, and how error messages name it: the producer's run-scoped
    output, or, outside a run or for an asset another job materialized, the asset's latest copy."""
    try:
        run_id, step_key = upstream.run_id, upstream.step_key
    except DagsterInvariantViolationError:  # loading an asset outside a run (load_asset_value)
        run_id, step_key = _NO_RUN, ""
    if run_id != _NO_RUN:
        path = PydanticJsonIOManager.output_path(root, run_id, step_key, upstream.name, upstream.mapping_key)
        return path, f"run {run_id}, step {step_key}"
    if not upstream.has_asset_key:
        raise StorageError(
            f"cannot load input {context.name!r}: its producer ran in no known run and is not an asset. "
            "Load values the flujo IO manager stored, from the run that produced them."
        )
    partition = context.asset_partition_key if context.has_asset_partitions else None
    path = PydanticJsonIOManager.asset_path(root, list(upstream.asset_key.path), partition)
    return path, f"asset {upstream.asset_key.to_user_string()}"
