"""Turning what a step returned into typed key values, exactly as they will load back from JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from flujo_dagster.errors import StepOutputError
from flujo_dagster.validation.typecompat import type_adapter, type_name

__all__ = ["adapter_for", "coerce_value", "from_json", "jsonable", "step_outputs", "to_json_bytes"]

T = TypeVar("T")


@cache
def _cached_adapter(annotation: object) -> TypeAdapter[object]:
    return type_adapter(annotation)


def adapter_for(annotation: object) -> TypeAdapter[object]:
    """A (cached) pydantic TypeAdapter for an annotation."""
    try:
        return _cached_adapter(annotation)
    except TypeError:  # unhashable annotation (rare): build a fresh one
        return type_adapter(annotation)


def jsonable(adapter: TypeAdapter[object], value: object) -> object:
    """The value dumped by pydantic in Python mode, by field name, ready for `to_json_bytes`."""
    return adapter.dump_python(value, mode="python", round_trip=True)


def to_json_bytes(obj: object) -> bytes:
    """JSON bytes with NaN and infinities kept (as `NaN`, `Infinity`, `-Infinity`)."""
    return to_json(obj, inf_nan_mode="constants")


def from_json(adapter: TypeAdapter[T], raw: str | bytes) -> T:
    """Validate JSON written by `to_json_bytes(jsonable(...))`: fields by name (aliases accepted too)."""
    return adapter.validate_json(raw, by_name=True)


def coerce_value(adapter: TypeAdapter[object], value: object) -> object:
    """The value as it will load back: a value of the type is passed through its JSON form (so what a step
    returns is exactly what later steps read, constraints checked); anything else is first validated
    leniently (a dict for a model). Raises pydantic's `ValidationError`."""
    try:
        py = adapter.dump_python(value, mode="python", round_trip=True, warnings="error")
    except PydanticSerializationError:
        py = jsonable(adapter, adapter.validate_python(value))
    return from_json(adapter, to_json_bytes(py))


def _split(path: str, writes: Sequence[str], split: bool, result: object) -> list[tuple[str, object]]:
    if not split:
        return [(writes[0], result)]
    pairs: list[tuple[str, object]] = []
    for key in writes:
        if isinstance(result, Mapping):
            if key not in result:
                raise StepOutputError(f"step {path} returned no value for key {key!r}; it writes {tuple(writes)}.")
            pairs.append((key, result[key]))
        elif hasattr(result, key):
            pairs.append((key, getattr(result, key)))
        else:
            raise StepOutputError(
                f"step {path} returned {type(result).__name__}, which has no attribute {key!r}; it writes "
                f"{tuple(writes)}: return a model or mapping with those names."
            )
    return pairs


def step_outputs(
    path: str, writes: Sequence[str], split: bool, result: object, fields: Mapping[str, object]
) -> dict[str, object]:
    """The typed value of every key a step writes, from what it returned. Raises `StepOutputError` naming the
    step path and the key when a value does not fit the key's type."""
    out: dict[str, object] = {}
    for key, value in _split(path, writes, split, result):
        annotation = fields[key]
        try:
            out[key] = coerce_value(adapter_for(annotation), value)
        except ValidationError as exc:
            raise StepOutputError(
                f"step {path} returned a value for key {key!r} that is not a {type_name(annotation)}: {exc}. "
                f"Return a {type_name(annotation)}, or change the context field."
            ) from exc
    return out
