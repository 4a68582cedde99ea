"""The JSON Schemas a parked gate recorded for its editable keys' types (`edit_schemas` in its `request` audit
event), read back from the run's event log as untrusted input: sizes capped, parsed by total functions, each
schema checked against Draft 2020-12's metaschema. An edited value is checked against its key's schema with a
Draft 2020-12 validator whose references resolve within the schema only (`$defs`): nothing is ever fetched; its
`pattern` is matched in linear time, as pydantic matches it. A key
without a usable schema (a request recorded before schemas were, a schema too large, malformed, or one that cannot
be applied) falls back to the JSON-kind check of `forms.py`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Protocol, cast

from dagster import DagsterEventType, DagsterInstance, DagsterRun
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from pydantic_core import SchemaError as PydanticSchemaError
from pydantic_core import SchemaValidator, core_schema
from pydantic_core import ValidationError as PydanticCoreValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from flujo_dagster.adapter.inbox.render import clean
from flujo_dagster.adapter.ops.approval import EDIT_SCHEMAS_FIELD, MAX_EDIT_SCHEMAS_BYTES
from flujo_dagster.names import AUDIT_KEY

__all__ = ["MAX_ERRORS", "EditSchema", "read_edit_schemas"]

MAX_ERRORS = 5
"""At most this many schema errors are shown for one field (then "and more")."""
MAX_MESSAGE_CHARS = 300


class _Error(Protocol):
    """What this module reads of a `jsonschema.ValidationError` (the library ships no type information)."""

    @property
    def message(self) -> str: ...

    @property
    def absolute_path(self) -> Sequence[str | int]: ...


class _Validator(Protocol):
    """What this module calls of a `jsonschema.Draft202012Validator`."""

    def iter_errors(self, instance: object) -> Iterator[_Error]: ...


def _refuse(uri: str) -> Resource[object]:
    """A registry's retrieval: refused, whatever the URI (a schema's `$ref` to anything outside it fails)."""
    raise NoSuchResource(uri)


@lru_cache(maxsize=256)
def _linear(pattern: str) -> SchemaValidator:
    """A matcher of `pattern` in linear time (Rust's regex engine, as pydantic checks `Field(pattern=...)`);
    `ValueError` when that engine cannot take it (then the schema is not applied)."""
    try:
        return SchemaValidator(core_schema.str_schema(pattern=pattern, regex_engine="rust-regex"))
    except PydanticSchemaError as exc:
        raise ValueError(f"pattern {pattern[:80]!r}: {exc}") from None


def _pattern(validator: object, pattern: object, instance: object, schema: object) -> Iterator[ValidationError]:
    """Draft 2020-12's `pattern`, matched in linear time: Python's `re` backtracks, so a pattern the app checks
    in linear time could take a worker for minutes on a crafted edit (`^(\\w+\\s?)*$` against `aaaa...!`)."""
    if not isinstance(instance, str) or not isinstance(pattern, str):
        return
    try:
        _linear(pattern).validate_python(instance)
    except PydanticCoreValidationError:
        yield ValidationError(f"{instance[:80]!r} does not match {pattern[:80]!r}")


_LinearValidator = validators.extend(Draft202012Validator, {"pattern": _pattern})
_OFFLINE: Registry[object] = Registry(retrieve=_refuse)  # type: ignore[call-arg]  # attrs' alias of _retrieve


@dataclass(frozen=True)
class EditSchema:
    """The JSON Schema of an editable key's type, as the gate recorded it (checked against the metaschema)."""

    key: str
    schema: Mapping[str, object]

    def problems(self, value: object) -> list[str] | None:
        """Why `value` is not valid for the key, readable (`sources.0: 'id' is a required property`), at most
        `MAX_ERRORS` and a last "and more"; [] when it is valid; None when the schema cannot be applied (a
        reference outside it, a cycle, a bad pattern): the caller falls back to the kind check."""
        validator = cast(_Validator, _LinearValidator(self.schema, registry=_OFFLINE))
        try:
            errors = list(islice(validator.iter_errors(value), MAX_ERRORS + 1))
            shown = [self._message(cast(_Error, best_match([error]))) for error in errors[:MAX_ERRORS]]
        except (Unresolvable, RecursionError, re.error, TypeError, ValueError):
            return None
        return shown + (["and more"] if len(errors) > MAX_ERRORS else [])

    def _message(self, error: _Error) -> str:
        path = ".".join(str(part) for part in error.absolute_path)
        where = f"{self.key}.{path}" if path else self.key
        return clean(f"{where}: {error.message[: MAX_MESSAGE_CHARS * 2]}", limit=MAX_MESSAGE_CHARS)


def _latest_request(instance: DagsterInstance, run: DagsterRun, gate: str) -> Mapping[str, object] | None:
    """The record of the latest `request` audit event of `gate` in `run` (not its chain), or None."""
    latest = None
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        metadata: Mapping[str, object] = getattr(data, "metadata", None) or {}
        record = getattr(metadata.get(AUDIT_KEY), "value", None)
        if isinstance(record, dict) and record.get("kind") == "request" and record.get("gate") == gate:
            latest = record
    return latest


def _schema(key: str, text: object) -> EditSchema | None:
    """The schema in `text` when it is JSON of an object that is a valid Draft 2020-12 schema, else None."""
    if not isinstance(text, str):
        return None
    try:
        schema = json.loads(text)
        if not isinstance(schema, dict):
            return None
        Draft202012Validator.check_schema(schema)
    except (ValueError, RecursionError, SchemaError, Unresolvable):
        return None
    return EditSchema(key=key, schema=schema)


def read_edit_schemas(
    instance: DagsterInstance, run: DagsterRun, gate: str, editable: Sequence[str]
) -> dict[str, EditSchema]:
    """The usable schema of each key of `editable` that gate `gate` of parked `run` recorded in its latest
    `request` audit event; at most `MAX_EDIT_SCHEMAS_BYTES` of schema text in all (never raises)."""
    record = _latest_request(instance, run, gate)
    recorded = record.get(EDIT_SCHEMAS_FIELD) if record is not None else None
    if not isinstance(recorded, dict):
        return {}
    found: dict[str, EditSchema] = {}
    room = MAX_EDIT_SCHEMAS_BYTES
    for key in editable:
        text = recorded.get(key)
        if not isinstance(text, str) or len(text) > room:
            continue
        room -= len(text)
        schema = _schema(key, text)
        if schema is not None:
            found[key] = schema
    return found
