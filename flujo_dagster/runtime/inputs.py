"""Validating a run's inputs with the pipeline's context model, before any step runs: the model's config (such
as `str_max_length`), its field types and constraints, and its field validators, for the fields a run starts
with. `run_pipeline`, `flujo-dagster run`, schedule ticks and the `flujo_inputs` op (Launchpad runs) all call
`validate_inputs`.

Model validators are not run on the inputs: they see the whole context, including the keys steps write later,
so they run on the final context (the `flujo_context` op). A check of the inputs alone belongs in a field
validator (which sees the fields before it in `info.data`)."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model, field_validator
from pydantic_core import ErrorDetails, PydanticSerializationError, to_json, to_jsonable_python

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import RunInputsError

__all__ = ["config_inputs", "inputs_model", "json_inputs", "validate_inputs"]

_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 40
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = _SHOWN.maxset = 4
_SHOWN.maxlevel = 2


@cache
def _inputs_model(context: type[BaseModel], keys: tuple[str, ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {k: (context.model_fields[k].annotation, context.model_fields[k]) for k in keys}
    validators: dict[str, Any] = {}
    for name, decorator in context.__pydantic_decorators__.field_validators.items():
        names = [f for f in decorator.info.fields if f in fields or f == "*"]
        if names:
            func = getattr(decorator.func, "__func__", decorator.func)
            validators[name] = field_validator(*names, mode=decorator.info.mode, check_fields=False)(classmethod(func))
    title = f"{context.__name__} (run inputs)"
    # the context's own config (str_max_length, strict, str_strip_whitespace, ...), except that an unknown
    # input is refused whatever the context allows
    config: ConfigDict = {
        **context.model_config,
        "extra": "forbid",
        "title": title,
        "validate_by_name": True,
        "arbitrary_types_allowed": True,
    }
    return create_model(title, __config__=config, __validators__=validators, __module__=context.__module__, **fields)


def inputs_model(pipeline: Pipeline) -> type[BaseModel]:
    """The model of a pipeline's run inputs (`run_input_keys`: required inputs and defaulted fields, never an
    upstream key), with the context model's config, field constraints and field validators."""
    return _inputs_model(pipeline.context, pipeline.run_input_keys())


def _shown(value: object) -> str:
    """A bad value as an error message shows it: never more than about 40 characters of it."""
    if isinstance(value, str | bytes) and len(value) > 40:
        return f"a {type(value).__name__} of {len(value)} characters"
    return _SHOWN.repr(value)


def _problem(error: ErrorDetails, upstream: Mapping[str, tuple[str, ...]]) -> str:
    """One bad, missing or unknown input: `field: what is wrong (error type; the value given)`; an upstream key
    (in `upstream`) says where its value comes from instead."""
    where = ".".join(map(str, error["loc"])) or "(inputs)"
    if error["type"] == "missing":
        return f"{where}: missing (a required input)"
    if error["type"] == "extra_forbidden" and where in upstream:
        return (
            f"{where}: not an input of this pipeline: it is read from the upstream asset "
            f"{'/'.join(upstream[where])!r}; materialize that asset instead (got {_shown(error['input'])})"
        )
    if error["type"] == "extra_forbidden":
        return f"{where}: not an input of this pipeline (got {_shown(error['input'])})"
    return f"{where}: {error['msg']} ({error['type']}; got {_shown(error['input'])})"


def _refused(pipeline: Pipeline, exc: ValidationError) -> RunInputsError:
    problems = [_problem(e, pipeline.upstream) for e in exc.errors(include_url=False)]
    required = pipeline.input_keys()
    defaulted = [k for k in pipeline.run_input_keys() if k not in required]
    lines = "\n".join(f"  - {p}" for p in problems)
    return RunInputsError(
        f"invalid run inputs for pipeline {pipeline.name!r} ({len(problems)} problem(s), checked with "
        f"{pipeline.context.__name__}; no step ran):\n{lines}\n"
        f"Fix the inputs named above and run again. Pipeline {pipeline.name!r} requires: "
        f"{', '.join(required) or 'nothing'}; its other inputs have defaults: {', '.join(defaulted) or 'none'}.",
        problems,
    )


def validate_inputs(pipeline: Pipeline, raw: Mapping[str, object]) -> dict[str, object]:
    """The value of every run input (`run_input_keys`): given inputs validated, defaults filled in. Upstream keys
    are not inputs (their values are loaded from their assets): giving one is refused as an unknown input.

    Raises `RunInputsError` naming the pipeline and every bad, missing or unknown input at once (field, the
    constraint it breaks, the value cut short), chained from pydantic's `ValidationError`.
    """
    try:
        validated = _validated(inputs_model(pipeline), dict(raw))
    except ValidationError as exc:
        raise _refused(pipeline, exc) from exc
    return {k: getattr(validated, k) for k in pipeline.run_input_keys()}


def _validated(model: type[BaseModel], raw: dict[str, object]) -> BaseModel:
    """`raw` validated by `model`. A strict model takes the inputs as JSON, as they arrive from the CLI, the
    Launchpad and schedule ticks (and as the final context is validated): in strict Python mode an ISO string
    would not be a date. Values JSON cannot hold are validated as they are."""
    if not model.model_config.get("strict"):
        return model.model_validate(raw)
    try:
        payload = to_json(raw, inf_nan_mode="constants")
    except PydanticSerializationError:
        return model.model_validate(raw)
    return model.model_validate_json(payload)


def json_inputs(pipeline: Pipeline, raw: Mapping[str, object]) -> dict[str, object]:
    """Validated inputs as the JSON values a Dagster run's config can hold (a `date` as its ISO string).

    Raises `RunInputsError` naming each input JSON cannot hold (an object of an arbitrary class)."""
    values: dict[str, object] = {}
    problems = []
    for key, value in raw.items():
        try:
            values[key] = to_jsonable_python(value)
        except PydanticSerializationError:
            problems.append(f"{key}: a {type(value).__name__}, which a run's config cannot hold (JSON values only)")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise RunInputsError(
            f"invalid run inputs for pipeline {pipeline.name!r} ({len(problems)} problem(s); no step ran):\n{lines}\n"
            "Give these inputs as JSON values (str, numbers, lists, mappings), or as types pydantic writes as JSON.",
            problems,
        )
    return values


def config_inputs(
    pipeline: Pipeline, raw: Mapping[str, object], filled: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The given inputs as a run's config holds them: JSON values, each in the form its validated value takes
    (`"5"` given for an `int` field becomes `5`, which the Launchpad's typed config schema accepts, where
    pydantic's lax mode took both) when that form validates to the same value; else as given (as for a field
    whose validator changes its value on every pass). `filled` (the partition key field) is validated with them
    but not returned.

    Raises `RunInputsError` as `validate_inputs` and `json_inputs` do."""
    extra = dict(filled or {})
    validated = validate_inputs(pipeline, {**raw, **extra})
    given = json_inputs(pipeline, raw)
    try:  # each validated value in its field's JSON form (bytes as the field's encoding, a date as ISO text)
        model = _validated(inputs_model(pipeline), {**raw, **extra})
        dumped = model.model_dump(mode="json", include=set(given))
    except (PydanticSerializationError, ValueError):  # not JSON once validated (ValidationError is a ValueError)
        return given
    canonical = {k: dumped.get(k, v) for k, v in given.items()}  # an input given by its alias stays as given
    for _ in range(2):  # keep the validated form of the inputs it validates to the same value, then check again
        if canonical == given:
            return given
        try:
            again = validate_inputs(pipeline, {**canonical, **extra})
        except RunInputsError:  # the validated form does not validate again: keep the inputs as given
            return given
        if again == validated:
            return canonical
        canonical = {k: canonical[k] if again.get(k) == validated.get(k) else given[k] for k in given}
    return given
