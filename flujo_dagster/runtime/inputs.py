"""Validating a run's inputs field by field with the pipeline's context model (its validators included)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails

from flujo_dagster.dsl.pipeline import Pipeline

__all__ = ["validate_inputs"]


def validate_inputs(pipeline: Pipeline, raw: Mapping[str, object]) -> dict[str, object]:
    """The value of every key the run starts with: given inputs validated, defaults filled in.

    Raises pydantic's `ValidationError` (titled with the context model) naming every bad, missing or
    unknown field at once. Field validators of the context model run for the given inputs.
    """
    model = pipeline.context
    allowed = pipeline.initial_keys()
    required = set(pipeline.input_keys())
    errors: list[InitErrorDetails] = []
    for name in raw:
        if name not in allowed:
            errors.append({"type": "extra_forbidden", "loc": (name,), "input": raw[name]})
    for name in pipeline.input_keys():
        if name not in raw:
            errors.append({"type": "missing", "loc": (name,), "input": dict(raw)})
    instance = model.model_construct()
    values: dict[str, object] = {}
    for name in allowed:
        if name not in raw:
            if name not in required:
                values[name] = model.model_fields[name].get_default(call_default_factory=True)
            continue
        try:
            model.__pydantic_validator__.validate_assignment(instance, name, raw[name])
        except ValidationError as exc:
            errors.extend(_as_init_errors(exc))
            continue
        values[name] = getattr(instance, name)
    if errors:
        raise ValidationError.from_exception_data(f"{model.__name__} (run inputs)", errors)
    return values


def _as_init_errors(exc: ValidationError) -> list[InitErrorDetails]:
    out: list[InitErrorDetails] = []
    for err in exc.errors():
        detail: dict[str, Any] = {"type": err["type"], "loc": err["loc"], "input": err["input"]}
        if "ctx" in err:
            detail["ctx"] = err["ctx"]
        out.append(detail)  # type: ignore[arg-type]
    return out
