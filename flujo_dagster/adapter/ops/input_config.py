"""The Dagster config schema of a pipeline's run inputs, derived from its context model's initial fields.

Each initial key becomes a typed config field with the pydantic field's description and JSON default, so the
Launchpad shows typed, documented inputs and Dagster refuses a value it can check (a wrong type, a missing
required input, an unknown input) before the run launches. The translation is total: a type Dagster cannot
express becomes `Any` (any JSON value). The `flujo_inputs` op still validates the inputs with the context model
(`runtime.inputs.validate_inputs`), which stays the source of truth: this schema is an earlier, coarser check.

| pydantic annotation | Dagster config type |
| --- | --- |
| `str`, `int`, `float`, `bool` | `String`, `Int`, `Float` (an int too), `Bool` |
| `list[X]` | `[X]` |
| `X \\| None`, `Optional[X]` | `Noneable(X)` |
| `Literal["a", "b"]`, an `Enum` whose values are all `str` | a Dagster `Enum` of those strings |
| a `BaseModel` (without aliases, not recursive) | `Shape` of its fields (`Permissive` unless `extra="forbid"`) |
| `dict[str, X]` | `Map(str, X)`; a bare `dict` or `dict[str, Any]`: `Permissive()` |
| `Annotated[X, ...]` | as `X` (its constraints are checked by pydantic); with a validator in it: `Any` |
| a field a model's `@field_validator` handles (or any field, with `coerce_numbers_to_str`) | `Any`, no default |
| anything else | `Any` |
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from typing import Annotated, Literal, Union, get_args, get_origin

from dagster import Any as DagsterAny
from dagster import Bool, DagsterError, EnumValue, Field, Float, Int, Map, Noneable, Permissive, Shape, String
from dagster import Enum as DagsterEnum
from pydantic import AfterValidator, BaseModel, BeforeValidator, PlainValidator, WrapValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.names import op_name
from flujo_dagster.validation.schedules import partition_input

__all__ = ["INPUTS_CONFIG_KEY", "inputs_config_field", "inputs_config_type"]

INPUTS_CONFIG_KEY = "inputs"
"""The key of the `flujo_inputs` op's config that holds the run's inputs."""

_SCALARS: dict[object, object] = {str: String, int: Int, float: Float, bool: Bool}
_NO_DEFAULT = object()
_PURE_FACTORIES: dict[object, object] = {list: [], dict: {}}
"""Default factories evaluated once at build (pure, and their value is JSON); any other leaves the field optional."""


def inputs_config_field(pipeline: Pipeline) -> Field:
    """The `inputs` field of the `flujo_inputs` op's config: a `Shape` of the pipeline's initial keys (required
    when some input is required)."""
    partition = partition_input(pipeline)
    required = set(pipeline.input_keys()) - {partition}  # the partition key fills its own
    written = pipeline.written_keys()  # a step's output key: optional, its default not scaffolded into the config
    fields = {
        k: _field(
            pipeline.context.model_fields[k],
            k in required,
            (k,),
            pipeline.name,
            frozenset(),
            k not in written,
            owner=pipeline.context,
        )
        for k in pipeline.run_input_keys()
        if k != partition
    }
    if partition is not None:  # no default: Dagster would put it in the config, where it contradicts the partition
        info = pipeline.context.model_fields[partition]
        fields[partition] = Field(
            inputs_config_type(info.annotation, (partition,), pipeline.name, frozenset()),
            is_required=False,
            description=f"Filled by the run's partition key; leave it out. {info.description or ''}".strip(),
        )
    shape = Shape(fields)  # type: ignore[no-untyped-call]
    return Field(
        shape,
        is_required=bool(required),
        description=f"The run inputs of pipeline {pipeline.name!r}, validated with {pipeline.context.__name__}.",
    )


def _field(
    info: FieldInfo,
    required: bool,
    path: tuple[str, ...],
    pipeline: str,
    seen: frozenset[type],
    shown: bool = True,
    owner: type[BaseModel] | None = None,
) -> Field:
    """One input's config field of model `owner`: its type, the pydantic field's description and (when optional
    and `shown`) its default. A field whose value user code validates is `Any` without a default (`_custom`)."""
    custom = owner is not None and _custom(owner, path[-1], info)
    config_type = DagsterAny if custom else inputs_config_type(info.annotation, path, pipeline, seen)
    if required:
        return Field(config_type, is_required=True, description=info.description)
    default = _json_default(info) if shown and not custom else _NO_DEFAULT
    if default is not _NO_DEFAULT:
        try:
            return Field(config_type, is_required=False, default_value=default, description=info.description)
        except DagsterError:  # a default the coarse type refuses (pydantic may accept it): no default shown
            pass
    return Field(config_type, is_required=False, description=info.description)


def _custom(owner: type[BaseModel], name: str, info: FieldInfo) -> bool:
    """True when user code sees the field's value before pydantic's type does, or changes it: a field validator
    of `owner` on it (or on every field), a validator in its `Annotated` metadata, or a model config that coerces
    numbers to strings. Dagster's type would then refuse values the model accepts (`"a,b"` split into a list),
    and a default Dagster wrote into the config would be validated, which pydantic does not do to defaults."""
    if owner.model_config.get("coerce_numbers_to_str") or _validates(info.metadata):
        return True
    decorators = owner.__pydantic_decorators__.field_validators.values()
    return any(name in d.info.fields or "*" in d.info.fields for d in decorators)


def _validates(metadata: object) -> bool:
    """True when `metadata` (a field's or an `Annotated`'s) holds a pydantic validator of user code."""
    validators = (AfterValidator, BeforeValidator, PlainValidator, WrapValidator)
    return isinstance(metadata, list | tuple) and any(isinstance(m, validators) for m in metadata)


def _json_default(info: FieldInfo) -> object:
    """The field's default as a plain JSON value (an `Enum` member as its value), or `_NO_DEFAULT`."""
    if info.default_factory is not None:
        return _PURE_FACTORIES.get(info.default_factory, _NO_DEFAULT)
    value = info.default
    if value is PydanticUndefined:
        return _NO_DEFAULT
    if isinstance(value, enum.Enum):
        value = value.value
    return value if _is_json(value) else _NO_DEFAULT


def _is_json(value: object) -> bool:
    """A plain JSON value: None, bool, int, float, str, and lists and str-keyed dicts of them (no subclasses)."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) is list:
        return all(_is_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_json(v) for k, v in value.items())
    return False


def inputs_config_type(annotation: object, path: tuple[str, ...], pipeline: str, seen: frozenset[type]) -> object:
    """The Dagster config type of a pydantic annotation (see the module's table); `Any` for what Dagster cannot
    express. `path` names the field (for an `Enum`'s unique name), `seen` the models being translated (a
    recursive model is `Any`). Never raises."""
    try:
        return _config_type(annotation, path, pipeline, seen)
    except (DagsterError, TypeError, ValueError):  # an exotic type Dagster refuses to describe: any JSON value
        return DagsterAny


def _config_type(annotation: object, path: tuple[str, ...], pipeline: str, seen: frozenset[type]) -> object:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return DagsterAny if _validates(args[1:]) else inputs_config_type(args[0], path, pipeline, seen)
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin in (Union, types.UnionType):
        return _union(args, path, pipeline, seen)
    if origin is list and len(args) == 1:
        return [inputs_config_type(args[0], path, pipeline, seen)]
    if origin is Literal or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return _enum(annotation, path, pipeline)
    if annotation is dict or origin is dict:
        return _mapping(args, path, pipeline, seen)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model(annotation, path, pipeline, seen)
    return DagsterAny


def _union(args: tuple[object, ...], path: tuple[str, ...], pipeline: str, seen: frozenset[type]) -> object:
    """`X | None` is `Noneable(X)`; any other union is `Any`."""
    others = [a for a in args if a is not type(None)]
    if len(others) != 1:
        return DagsterAny
    inner = inputs_config_type(others[0], path, pipeline, seen)
    if len(others) == len(args) or inner is DagsterAny:  # `Any` already takes null
        return inner
    return Noneable(inner)


def _enum(annotation: object, path: tuple[str, ...], pipeline: str) -> object:
    """A `Literal` of strings or an `Enum` of string values: a Dagster `Enum` named after the field (unique in
    the job); other literals and enums are `Any`."""
    if get_origin(annotation) is Literal:
        values = list(get_args(annotation))
    else:
        assert isinstance(annotation, type) and issubclass(annotation, enum.Enum)
        values = [member.value for member in annotation]
    values = [v.value if isinstance(v, enum.Enum) else v for v in values]
    if not values or not all(type(v) is str for v in values):
        return DagsterAny
    unique = list(dict.fromkeys(values))
    return DagsterEnum(op_name(pipeline, "inputs", *path), [EnumValue(v) for v in unique])


def _mapping(args: tuple[object, ...], path: tuple[str, ...], pipeline: str, seen: frozenset[type]) -> object:
    """`dict[str, X]` is `Map(str, X)`; a bare `dict` or one of any values is `Permissive()`; other keys `Any`."""
    if not args:
        return Permissive()  # type: ignore[no-untyped-call]
    if len(args) != 2 or args[0] is not str:
        return DagsterAny
    inner = inputs_config_type(args[1], path, pipeline, seen)
    return Permissive() if inner is DagsterAny else Map(str, inner)  # type: ignore[no-untyped-call]


def _model(model: type[BaseModel], path: tuple[str, ...], pipeline: str, seen: frozenset[type]) -> object:
    """A nested model: a `Shape` of its fields (`Permissive` unless it forbids extra keys, as pydantic then
    ignores or keeps them). A recursive model, or one whose fields have aliases (pydantic then expects the
    alias), is `Any`."""
    fields: Mapping[str, FieldInfo] = model.model_fields
    if model in seen or any(f.alias or f.validation_alias for f in fields.values()):
        return DagsterAny
    inner = seen | {model}
    shape = {
        name: _field(info, info.is_required(), (*path, name), pipeline, inner, owner=model)
        for name, info in fields.items()
    }
    if model.model_config.get("extra") == "forbid":
        return Shape(shape, description=model.__doc__)  # type: ignore[no-untyped-call]
    return Permissive(shape, description=model.__doc__)  # type: ignore[no-untyped-call]
