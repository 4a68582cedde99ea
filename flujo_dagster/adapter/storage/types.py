"""Dagster types for context keys, made from pydantic `TypeAdapter`s (unions, Literal, Annotated, TypedDict...)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from dagster import DagsterType, TypeCheck, TypeCheckContext
from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError

from flujo_dagster.runtime.values import adapter_for, coerce_value
from flujo_dagster.validation.typecompat import type_name

__all__ = ["KeyType", "key_type"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class KeyType(DagsterType):
    """The Dagster type of one context key. Holds the key's annotation and its `TypeAdapter`."""

    def __init__(self, *, name: str, key: str, annotation: object) -> None:
        self.context_key = key
        self.annotation = annotation
        self.adapter: TypeAdapter[object] = adapter_for(annotation)
        super().__init__(
            type_check_fn=self._check,
            name=name,
            description=f"context key {key!r}: {type_name(annotation)} (stored as JSON)",
            typing_type=Any,
        )

    def _check(self, _context: TypeCheckContext, value: object) -> TypeCheck:
        # Serializing with warnings as errors checks the value's shape without re-validating it: validation is
        # not idempotent for every type (Base64Bytes would decode twice).
        try:
            self.adapter.dump_python(value, mode="python", warnings="error")
        except PydanticSerializationError as exc:
            return TypeCheck(
                success=False,
                description=f"value for key {self.context_key!r} is not a {type_name(self.annotation)}: {exc}",
            )
        return TypeCheck(success=True)

    def coerce(self, value: object) -> object:
        """The value as it will load back: a value of the key's type is passed through its JSON form (so what
        a step returns is exactly what later steps read, constraints checked); anything else is first
        validated leniently (a dict for a model). Raises pydantic's `ValidationError`."""
        return coerce_value(self.adapter, value)


@cache
def _cached(name: str, key: str, annotation: object) -> KeyType:
    return KeyType(name=name, key=key, annotation=annotation)


def key_type(pipeline: str, key: str, annotation: object) -> KeyType:
    """The (cached) Dagster type for `key` of `pipeline`; one object per key so builds stay cheap."""
    name = _UNSAFE.sub("_", f"{pipeline}__{key}")
    try:
        return _cached(name, key, annotation)
    except TypeError:  # unhashable annotation (rare): build a fresh one
        return KeyType(name=name, key=key, annotation=annotation)
