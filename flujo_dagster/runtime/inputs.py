"""Validating a run's inputs with the pipeline's context model: its field types, constraints and field
validators, for the fields a run starts with. Model validators see the whole context, so they run on the final
context (the `flujo_context` op), not on the inputs."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model, field_validator

from flujo_dagster.dsl.pipeline import Pipeline

__all__ = ["inputs_model", "validate_inputs"]


@cache
def _inputs_model(context: type[BaseModel], keys: tuple[str, ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {k: (context.model_fields[k].annotation, context.model_fields[k]) for k in keys}
    validators: dict[str, Any] = {}
    for name, decorator in context.__pydantic_decorators__.field_validators.items():
        names = [f for f in decorator.info.fields if f in fields or f == "*"]
        if names:
            func = getattr(decorator.func, "__func__", decorator.func)
            validators[name] = field_validator(*names, mode=decorator.info.mode, check_fields=False)(classmethod(func))
    return create_model(
        f"{context.__name__} (run inputs)",
        __config__=ConfigDict(extra="forbid", validate_by_name=True, arbitrary_types_allowed=True),
        __validators__=validators,
        __module__=context.__module__,
        **fields,
    )


def inputs_model(pipeline: Pipeline) -> type[BaseModel]:
    """The model of a pipeline's run inputs: its initial keys (required inputs and defaulted fields)."""
    return _inputs_model(pipeline.context, pipeline.initial_keys())


def validate_inputs(pipeline: Pipeline, raw: Mapping[str, object]) -> dict[str, object]:
    """The value of every key the run starts with: given inputs validated, defaults filled in.

    Raises pydantic's `ValidationError` (titled `<Context> (run inputs)`) naming every bad, missing or
    unknown field at once.
    """
    validated = inputs_model(pipeline).model_validate(dict(raw))
    return {k: getattr(validated, k) for k in pipeline.initial_keys()}
