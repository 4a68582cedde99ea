"""`PydanticJsonIOManager`: every context key stored as JSON in a small typed envelope, run-scoped."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from functools import cache
from pathlib import PurePosixPath
from typing import Any, Generic, Literal, TypeVar

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    ConfigurableIOManager,
    DagsterInstance,
    DagsterInvariantViolationError,
    DagsterRun,
    DagsterType,
    InputContext,
    MetadataValue,
    OutputContext,
)
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json as from_json_value
from upath import UPath

from flujo_dagster import names
from flujo_dagster.adapter.storage.budgets import chain_of
from flujo_dagster.adapter.storage.files import (
    FILE_SUFFIX,
    PARTITION_MARK,
    Origin,
    encode_name,
    origin_remedy,
    read_file,
    stored_path,
    write_file,
)
from flujo_dagster.adapter.storage.types import KeyType
from flujo_dagster.config import STORAGE_SECRET_ENV, storage_secret
from flujo_dagster.errors import StorageError
from flujo_dagster.runtime.values import adapter_for, from_json, jsonable, to_json_bytes
from flujo_dagster.validation.typecompat import type_name

__all__ = [
    "ENVELOPE_VERSION",
    "Bundle",
    "Origin",
    "PydanticJsonIOManager",
    "StoredKey",
    "bundled_value",
    "dump_bundle",
    "dump_envelope",
    "latest_materialization",
    "materialized_before",
    "never_materialized",
    "place_of",
    "read_bundle",
    "read_envelope",
    "read_file",
    "stored_path",
    "write_file",
]

ENVELOPE_VERSION = 2
_NO_RUN = "__EPHEMERAL_RUN_ID"
"""The run id Dagster gives an upstream output it did not produce in this run (its RUN_ID_PLACEHOLDER)."""
_ASSETS = "assets"
_PLAIN, _KEYED = "sha256", "hmac-sha256"
_TRAILER = re.compile(rb',"hash":"(sha256|hmac-sha256):([0-9a-f]{64})"\}\Z')
"""The end of every envelope: its content hash, over the envelope's bytes without it."""
T = TypeVar("T")


class _Envelope(BaseModel, Generic[T]):
    flujo: Literal[2]
    key: str
    type: str
    value: T
    hash: str


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


# --- the envelope and its content hash ---------------------------------------------------------------------------


def place_of(path: UPath, root: UPath | None = None) -> str:
    """Where a stored file is, as its hash binds it: its path under `root` (default: its folder), the encoded
    names joined by `/`. Not stored in the file: a file moved or copied to another place fails its hash."""
    base, full = PurePosixPath((root if root is not None else path.parent).path), PurePosixPath(path.path)
    return full.relative_to(base).as_posix() if full.is_relative_to(base) else full.as_posix()


def _digest(body: bytes, algorithm: str, secret: str | None, place: str) -> str:
    data = place.encode("utf-8", "surrogatepass") + b"\n" + body  # the place, as associated data
    if algorithm == _KEYED:
        assert secret is not None
        return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def dump_envelope(stored: StoredKey, value: object, path: UPath, root: UPath | None = None) -> bytes:
    """The envelope bytes for `value` stored at `path` under `root`: `{"flujo": 2, "key", "type", "value",
    "hash"}`, the hash (HMAC-SHA256 keyed with `FLUJO_DAGSTER_STORAGE_SECRET` when it is set, else SHA-256) over
    the file's place (`place_of`, a newline) and the envelope without the hash."""
    body = to_json_bytes(
        {
            "flujo": ENVELOPE_VERSION,
            "key": stored.key,
            "type": type_name(stored.annotation),
            "value": jsonable(stored.adapter, value),
        }
    )
    secret = storage_secret()
    algorithm = _KEYED if secret is not None else _PLAIN
    trailer = f',"hash":"{algorithm}:{_digest(body, algorithm, secret, place_of(path, root))}"}}'
    return body[:-1] + trailer.encode()


def _header(raw: bytes) -> str:
    """Why bytes without a content hash are no envelope of this version, without echoing them."""
    try:
        parsed = from_json_value(raw)
    except ValueError as exc:
        return f"corrupt (not a flujo_dagster JSON envelope): not JSON ({str(exc).split(chr(10))[0]})"
    version = parsed.get("flujo") if isinstance(parsed, dict) else None
    if type(version) is int and 0 < version < ENVELOPE_VERSION:  # only a known version is named, nothing else
        return (
            f"written in envelope version {version}, and this flujo_dagster reads version {ENVELOPE_VERSION} only "
            "(files of older versions are not converted)"
        )
    return "corrupt (not a flujo_dagster JSON envelope): it does not end with a content hash"


def _verify(raw: bytes, path: UPath, root: UPath | None, stored: StoredKey, where: str | Origin) -> None:
    """Refuse bytes whose content hash is missing, of the wrong kind, or does not match."""
    named = f"stored value of key {stored.key!r} ({where}) at {path}"
    remedy = origin_remedy(where)
    found = _TRAILER.search(raw)
    if found is None:
        raise StorageError(f"{named} is {_header(raw)}. {remedy}")
    algorithm, digest = found.group(1).decode(), found.group(2).decode()
    secret = storage_secret()
    if algorithm == _KEYED and secret is None:
        raise StorageError(
            f"{named} carries a keyed hash ({_KEYED}), and {STORAGE_SECRET_ENV} is not set: set it to the secret "
            f"the file was written with. Or: {remedy}"
        )
    if algorithm == _PLAIN and secret is not None:
        raise StorageError(
            f"{named} carries a plain {_PLAIN} hash, but {STORAGE_SECRET_ENV} is set: the file was written without "
            f"the secret (before it was set, or by someone who does not know it). {remedy}"
        )
    body = raw[: found.start()] + b"}"
    if not hmac.compare_digest(_digest(body, algorithm, secret, place_of(path, root)), digest):
        raise StorageError(
            f"{named} was changed after it was written (edited by hand, corrupted, written with another "
            f"{STORAGE_SECRET_ENV}), or moved or copied here from another place (another run's, step's or "
            f"item's): its content and place do not match its {algorithm} hash. {remedy}"
        )


def read_envelope(
    path: UPath, stored: StoredKey, *, where: str | Origin, root: UPath | None = None, sha256: str | None = None
) -> object:
    """Load and validate the value at `path` (under `root`, default its folder: see `read_file`). `where` names the
    run and step (an `Origin`, or words) for error messages. Checks the file's SHA-256 when `sha256` is given, the
    content hash (and place), the envelope version and the key; every failure is a `StorageError` that never
    shows the file's content."""
    raw = read_file(path, root=root, key=stored.key, where=where)
    if sha256 is not None and not hmac.compare_digest(hashlib.sha256(raw).hexdigest(), sha256):
        raise StorageError(
            f"stored value of key {stored.key!r} ({where}) at {path} is not the file its manifest lists: it was "
            f"replaced, moved or copied here. {origin_remedy(where)}"
        )
    _verify(raw, path, root, stored, where)
    try:
        envelope = from_json(_envelope_adapter(stored.annotation), raw)
    except ValidationError as exc:
        raise _unreadable(exc, path, stored, where) from None  # pydantic's error holds the content: never chained
    if stored.check_key and envelope.key != stored.key:
        raise StorageError(
            f"stored file {path} ({where}) holds key {envelope.key!r}, not {stored.key!r}: it was copied or "
            f"moved by hand. Put the right file back, or delete it. {origin_remedy(where)}"
        )
    return envelope.value


def _unreadable(exc: ValidationError, path: UPath, stored: StoredKey, where: str | Origin) -> StorageError:
    """Why an intact envelope did not validate: its value no longer matches the declared type (the context field
    changed since it was written), or it is no envelope. Locations and error types only: never input values."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    listed = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['type']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    named = f"stored value of key {stored.key!r} ({where}) at {path}"
    if any(e["loc"][:1] == ("flujo",) for e in errors):
        return StorageError(
            f"{named} is not in envelope version {ENVELOPE_VERSION}, the only one this flujo_dagster reads. "
            f"{origin_remedy(where)}"
        )
    if all(e["loc"][:1] == ("value",) for e in errors) and not any(
        e["loc"] == ("value",) and e["type"] == "missing" for e in errors
    ):
        return StorageError(
            f"{named} no longer matches its declared type {type_name(stored.annotation)}: {listed}{more}. Change "
            f"the context field back, or: {origin_remedy(where)}"
        )
    return StorageError(
        f"{named} is corrupt (not a flujo_dagster JSON envelope): {listed}{more}. {origin_remedy(where)}"
    )


class PydanticJsonIOManager(ConfigurableIOManager):
    """Stores each op output as JSON at `<base_dir>/<run_id>/<step_key>/<output>[/<mapping_key>].json`.

    Values are written with pydantic (NaN and infinities kept) inside an envelope naming the key, the type, the
    format version and a content hash, and loaded back as exactly the declared type. Outputs that are assets are
    also copied to `<base_dir>/assets/<asset key>.json` (`.../<asset key>/partition=<key>.json` per partition) for
    loads outside a run; loads inside a run (and its re-executions) always read the run-scoped copy. Every name
    in a path is encoded (`encode_name`), no symlink is followed and writes are atomic (`files`). It writes no
    log event of its own. No pickle. `base_dir` defaults to `<instance storage directory>/flujo`; any UPath URL
    works (s3://, memory://...).
    """

    base_dir: str | None = None

    # -- paths ---------------------------------------------------------------------------------------
    def root(self, storage_directory: str) -> UPath:
        """The storage root, given the instance's storage directory."""
        return UPath(self.base_dir) if self.base_dir else UPath(storage_directory) / "flujo"

    @staticmethod
    def output_path(root: UPath, run_id: str, step_key: str, output_name: str, mapping_key: str | None = None) -> UPath:
        """Where one op output lives (each name encoded: see `stored_path`)."""
        names = (run_id, step_key, output_name, mapping_key) if mapping_key else (run_id, step_key, output_name)
        return stored_path(root, *names)

    @staticmethod
    def asset_path(root: UPath, asset_path: list[str], partition: str | None = None) -> UPath:
        """Where the latest value of an asset (of one partition) lives, for loads outside a run."""
        if partition is None:
            return stored_path(root, _ASSETS, *asset_path)
        folder = root.joinpath(encode_name(_ASSETS), *map(encode_name, asset_path))
        return folder / f"{PARTITION_MARK}{encode_name(partition)}{FILE_SUFFIX}"

    # -- values ------------------------------------------------------------------------------------------
    @staticmethod
    def dump(stored: StoredKey, value: object, path: UPath, root: UPath | None = None) -> bytes:
        """The envelope bytes for `value` stored at `path` under `root` (`dump_envelope`)."""
        return dump_envelope(stored, value, path, root)

    @staticmethod
    def write(path: UPath, data: bytes, *, root: UPath | None = None, key: str = "", where: str | Origin = "") -> None:
        """Write bytes atomically under `root`, creating folders (`write_file`)."""
        write_file(path, data, root=root, key=key, where=where)

    @staticmethod
    def read(path: UPath, stored: StoredKey, *, where: str | Origin, root: UPath | None = None) -> object:
        """Load and validate the value at `path`; `where` names the run and step for errors (`read_envelope`)."""
        return read_envelope(path, stored, where=where, root=root)

    # -- Dagster's IO manager interface ---------------------------------------------------------------
    def handle_output(self, context: OutputContext, obj: object) -> None:
        """Store `obj`; adds the path as output metadata (no extra event)."""
        stored = StoredKey.of(context.dagster_type, context.name)
        root = self.root(context.step_context.instance.storage_directory())
        origin = Origin(context.run_id, context.step_key, _step_path(context))
        path = self.output_path(root, context.run_id, context.step_key, context.name, context.mapping_key)
        data = dump_bundle(obj, path, root) if isinstance(obj, Bundle) else self.dump(stored, obj, path, root)
        self.write(path, data, root=root, key=stored.key, where=origin)
        metadata = {names.PATH: MetadataValue.path(str(path))}
        if context.has_asset_key:
            partition = context.asset_partition_key if context.has_asset_partitions else None
            asset_file = self.asset_path(root, list(context.asset_key.path), partition)
            self.write(asset_file, self.dump(stored, obj, asset_file, root), root=root, key=stored.key, where=origin)
        context.add_output_metadata(metadata)

    def load_input(self, context: InputContext) -> object:
        """Load the producer's value as the producer's declared type (fan-in elements included)."""
        upstream = context.upstream_output
        if upstream is None:
            raise StorageError(
                f"input {context.name!r} of step {context.step_context.step.key} has no upstream output; "
                "the flujo IO manager only loads values that ops produced."
            )
        root = self.root(context.instance.storage_directory())
        if upstream.name == names.BUNDLE_OUTPUT:
            return _load_bundled(context, upstream, root)
        stored = StoredKey.of(_declared_type(context, upstream), upstream.name)
        path, origin = _source(context, upstream, root)
        return self.read(path, stored, where=origin, root=root)


# --- bundles: the keys of a fused inline op in one envelope ----------------------------------------------------------


class Bundle:
    """The value of a fused inline op's `BUNDLE_OUTPUT`: the keys it writes and their declared annotations."""

    __slots__ = ("annotations", "values")

    def __init__(self, *, values: Mapping[str, object], annotations: Mapping[str, object]) -> None:
        self.values = values
        self.annotations = annotations


def _bundle_key() -> StoredKey:
    return StoredKey(names.BUNDLE_OUTPUT, dict[str, Any])


def dump_bundle(bundle: Bundle, path: UPath, root: UPath | None = None) -> bytes:
    """One envelope (key `BUNDLE_OUTPUT`) whose value maps each key to its value dumped as its own type."""
    dumped = {k: jsonable(adapter_for(bundle.annotations[k]), v) for k, v in bundle.values.items()}
    return dump_envelope(_bundle_key(), dumped, path, root)


def read_bundle(path: UPath, *, where: str | Origin, root: UPath | None = None) -> dict[str, object]:
    """A bundle's keys as JSON values, the envelope checked like every other (`read_envelope`)."""
    value = read_envelope(path, _bundle_key(), where=where, root=root)
    assert isinstance(value, dict)
    return value


def bundled_value(keys: Mapping[str, object], stored: StoredKey, path: UPath, where: str | Origin) -> object:
    """Key `stored.key` of a bundle (`read_bundle`), validated as its declared type."""
    if stored.key not in keys:
        raise StorageError(
            f"stored bundle {path} ({where}) holds no key {stored.key!r}: it was replaced by hand. "
            f"{origin_remedy(where)}"
        )
    try:
        return from_json(stored.adapter, to_json_bytes(keys[stored.key]))
    except ValidationError as exc:  # locations and error types only: pydantic's error holds the content
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        listed = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['type']}" for e in errors[:5])
        raise StorageError(
            f"key {stored.key!r} of stored bundle {path} ({where}) no longer matches its declared type "
            f"{type_name(stored.annotation)}: {listed}. Change the context field back, or: {origin_remedy(where)}"
        ) from None


def _load_bundled(context: InputContext, upstream: OutputContext, root: UPath) -> object:
    """An input wired to a fused inline op's bundle: the key the input declares, from the bundle of the run that
    produced it (the parent's, on a re-execution), validated as the key's type."""
    declared = context.dagster_type
    if not isinstance(declared, KeyType):
        raise StorageError(f"input {context.name!r} is wired to the bundle of an inline op and declares no context key")
    run_id, step_key = upstream.run_id, upstream.step_key
    path = PydanticJsonIOManager.output_path(root, run_id, step_key, names.BUNDLE_OUTPUT, upstream.mapping_key)
    where = Origin(run_id, step_key, _step_path(upstream))
    stored = StoredKey(declared.context_key, declared.annotation)
    return bundled_value(read_bundle(path, where=where, root=root), stored, path, where)


def _step_path(context: OutputContext) -> str | None:
    """The flujo step path of the op that writes an output (its `flujo/step_path` tag), when known."""
    try:
        return context.op_def.tags.get(names.STEP_PATH)
    except DagsterInvariantViolationError:  # no op definition outside a run
        return None


def _source(context: InputContext, upstream: OutputContext, root: UPath) -> tuple[UPath, Origin]:
    """Where the value of `context`'s input is stored, and who writes it: the producer's run-scoped output; for a
    key of the pipeline's own assets that a subset run does not produce, the output of its latest materialization;
    outside a run or for an asset another job materialized, the asset's latest copy."""
    try:
        run_id, step_key = upstream.run_id, upstream.step_key
    except DagsterInvariantViolationError:  # an asset this run does not produce, or a load outside a run
        run_id, step_key = _NO_RUN, ""
    if run_id == _NO_RUN and isinstance(context.dagster_type, KeyType) and context.has_asset_key and _in_run(context):
        return _subset_source(context, context.dagster_type, upstream, root)
    if run_id != _NO_RUN:
        path = PydanticJsonIOManager.output_path(root, run_id, step_key, upstream.name, upstream.mapping_key)
        return path, Origin(run_id, step_key, _step_path(upstream))
    if not upstream.has_asset_key:
        raise StorageError(
            f"cannot load input {context.name!r}: its producer ran in no known run and is not an asset. "
            "Load values the flujo IO manager stored, from the run that produced them."
        )
    partition = context.asset_partition_key if context.has_asset_partitions else None
    path = PydanticJsonIOManager.asset_path(root, list(upstream.asset_key.path), partition)
    return path, Origin(asset=upstream.asset_key.to_user_string(), partition=partition)


_PAGE = 100
"""Materialization records read at a time while looking for the latest one a run stored."""


def _in_run(context: InputContext) -> bool:
    try:
        context.step_context  # noqa: B018 - raises outside a run
    except DagsterInvariantViolationError:
        return False
    return True


def materialized_before(instance: DagsterInstance, run: DagsterRun) -> float | None:
    """When the run (the root of its re-execution chain as the instance proves it, never as a client named it:
    `chain_of`) was created: a subset run and its re-executions load the materializations made before it, so a
    re-execution loads what the run it resumes loaded, and a forged root cannot steer a run to an older value."""
    record = instance.get_run_record_by_id(chain_of(run, instance)[-1].run_id)
    return record.create_timestamp.timestamp() if record is not None else None


def latest_materialization(
    instance: DagsterInstance, asset_key: AssetKey, partition: str | None, *, before: float | None = None
) -> tuple[str, str] | None:
    """The run id and step key of the latest materialization of `asset_key` (of `partition`) that a run's step
    stored, made before `before` (a timestamp) when given; None when there is none. One reported by hand (no run,
    no step: nothing was stored) is passed over."""
    cursor = None
    while True:
        page = instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=asset_key,
                asset_partitions=[partition] if partition is not None else None,
                before_timestamp=before,
            ),
            limit=_PAGE,
            cursor=cursor,
        )
        for record in page.records:
            step_key = record.event_log_entry.step_key
            if record.run_id and step_key:
                return record.run_id, step_key
        if not page.has_more:
            return None
        cursor = page.cursor


def never_materialized(pipeline: str, key: str, asset: AssetKey, partition: str | None) -> StorageError:
    """The error of a subset run that needs a value of its pipeline no run has materialized."""
    of_partition = f", partition {partition!r}" if partition is not None else ""
    return StorageError(
        f"pipeline {pipeline!r}: this run materializes a subset of its assets and needs key {key!r} from asset "
        f"{asset.to_user_string()}{of_partition}, which has never been materialized. Materialize asset "
        f"{asset.to_user_string()}{of_partition} first, or include it in the selection."
    )


def _subset_source(
    context: InputContext, declared: KeyType, upstream: OutputContext, root: UPath
) -> tuple[UPath, Origin]:
    """Where a subset run loads key `declared` of an asset of its own pipeline it does not produce: the step output
    of the asset's latest materialization of the same partition (before the run's chain began)."""
    run = context.step_context.dagster_run
    asset_key = context.asset_key
    partition = context.asset_partition_key if context.has_asset_partitions else None
    before = materialized_before(context.instance, run)
    found = latest_materialization(context.instance, asset_key, partition, before=before)
    if found is None:
        named = upstream.definition_metadata.get(names.PIPELINE, run.job_name)
        pipeline = str(getattr(named, "value", named))
        raise never_materialized(pipeline, declared.context_key, asset_key, partition)
    run_id, step_key = found
    path = PydanticJsonIOManager.output_path(root, run_id, step_key, names.io_name(declared.context_key))
    return path, Origin(run_id, step_key)
