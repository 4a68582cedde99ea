"""The YAML models of `FlujoPipelineComponent`'s attributes that stand for DSL value objects (`Price`, `Budget`,
`Schedule`, `DailyPartitions`, `StaticPartitions`): their fields are derived from the value objects' own, and
each model validates straight into its value object, whose own checks (and messages) apply."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import operator
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from decimal import Decimal
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from dagster.components import Model
from pydantic import Field, create_model
from typing_extensions import TypeForm

from flujo_dagster.dsl.budget import DEFAULT_MAX_WAIT, Budget
from flujo_dagster.dsl.schedules import DailyPartitions, Partitions, Schedule, StaticPartitions
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.pricing.prices import Price

__all__ = ["BudgetModel", "PartitionsModel", "PriceModel", "ScheduleModel", "load_object", "yaml_fields"]

M = TypeVar("M", bound=Model)
V = TypeVar("V")

_YAML_FORMS: dict[object, tuple[TypeForm[object], ...]] = {
    Decimal: (str, float),
    date: (str,),
    tuple[str, ...]: (list[str],),
}
"""How YAML writes values of the types it has no form for: dollars as a number or a string (read as written, so
0.1 is exactly 0.1), dates as `YYYY-MM-DD`, tuples of strings as lists (Dagster's component models take no
`tuple[str, ...]`)."""


def _yaml_annotation(annotation: TypeForm[object]) -> TypeForm[object]:
    """`annotation` in its YAML form (`Decimal | None` becomes `str | float | None`)."""
    members: tuple[TypeForm[object], ...] = (
        get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    )
    forms: list[TypeForm[object]] = []
    for member in members:
        forms.extend(form for form in _YAML_FORMS.get(member, (member,)) if form not in forms)
    return functools.reduce(operator.or_, forms)


def yaml_fields(
    *value_types: type,
    overrides: Mapping[str, tuple[TypeForm[object], object]] | None = None,
    optional: bool = False,
) -> Callable[[type[M]], type[M]]:
    """Class decorator: the YAML model gets a field for every field of the `value_types` (dataclasses), with the
    same name and default and the field's type in its YAML form, or as `overrides` give it. `optional=True`: a
    field without a default may be left out too (a model for several value types, checked when it resolves)."""

    def derive(model: type[M]) -> type[M]:
        given = dict(overrides or {})
        fields: dict[str, tuple[TypeForm[object], object]] = {}
        for value_type in value_types:
            hints = get_type_hints(value_type)
            for field in dataclasses.fields(value_type):
                if field.name in fields:
                    continue
                yaml_type = _yaml_annotation(hints[field.name])
                if field.name in given:
                    fields[field.name] = given.pop(field.name)
                elif field.default is not dataclasses.MISSING:
                    fields[field.name] = (yaml_type, field.default)
                elif field.default_factory is not dataclasses.MISSING:
                    fields[field.name] = (yaml_type, Field(default_factory=field.default_factory))
                elif optional:
                    fields[field.name] = (_yaml_annotation(hints[field.name] | None), None)
                else:
                    fields[field.name] = (yaml_type, ...)  # required
        definitions: dict[str, Any] = {**fields, **given}  # `create_model` types its field definitions `Any`
        return create_model(
            model.__name__, __base__=model, __module__=model.__module__, __doc__=model.__doc__, **definitions
        )

    return derive


def _value(value_type: Callable[..., V], where: str, fields: Mapping[str, object]) -> V:
    """`value_type(**fields)`, its `ConfigurationError` naming the attribute `where`."""
    try:
        return value_type(**fields)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc


def load_object(path: str, what: str) -> object:
    """The object at `path` (`package.module:attr` or `package.module.attr`); `ConfigurationError` names
    `what` when it cannot be imported."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigurationError(f"{what}: {path!r} is not an import path like 'mypkg.pipelines:digest'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{what}: cannot import module {module_name!r} of {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None


@yaml_fields(Price)
class PriceModel(Model):
    """US dollars per million tokens of one `provider:model` (see `flujo_dagster.Price`)."""

    def resolve(self, where: str) -> Price:
        """The `Price` (`where` names the attribute in messages)."""
        return _value(Price, where, self.model_dump())


_MAX_WAIT_S: object = Field(
    default=DEFAULT_MAX_WAIT.total_seconds(), description="Budget max_wait, in seconds (0: refused at once)."
)

_MAX_WAIT_LIMIT_S = float(timedelta.max.days * 86_400)
"""The longest `max_wait` in seconds a `timedelta` holds (about 2.7 million years)."""


def _max_wait(seconds: float) -> timedelta:
    """The YAML `max_wait` (seconds) as a `timedelta`; `ConfigurationError` when it is not a finite number from 0
    to `_MAX_WAIT_LIMIT_S` (a raw `OverflowError` or `ValueError` otherwise)."""
    if math.isfinite(seconds) and 0 <= seconds <= _MAX_WAIT_LIMIT_S:
        return timedelta(seconds=seconds)
    raise ConfigurationError(
        f"budget: Budget max_wait must be a finite number of seconds from 0 to {_MAX_WAIT_LIMIT_S:g}, got {seconds!r}"
    )


@yaml_fields(Budget, overrides={"max_wait": (float, _MAX_WAIT_S)})  # Dagster's YAML models take no timedelta
class BudgetModel(Model):
    """A spending limit on the whole pipeline (see `flujo_dagster.Budget`); replaces the pipeline's own."""

    def resolve(self) -> Budget:
        """The `Budget` (`max_wait` given in seconds)."""
        fields = self.model_dump()
        fields["max_wait"] = _max_wait(fields["max_wait"])
        return _value(Budget, "budget", fields)


_FIXED_INPUTS: object = Field(default_factory=dict, description="Fixed run inputs (JSON values).")


@yaml_fields(Schedule, overrides={"inputs": (dict[str, Any], _FIXED_INPUTS)})  # Dagster's YAML models take `Any`
class ScheduleModel(Model):
    """A cron schedule (see `flujo_dagster.Schedule`); replaces the pipeline's own."""

    inputs_fn: str | None = Field(
        default=None, description="Import path of a function of the scheduled time returning the run inputs."
    )

    def resolve(self) -> Schedule:
        """The `Schedule`, with the inputs function imported."""
        fields = self.model_dump(exclude={"inputs_fn"})
        if self.inputs_fn is not None:
            if fields["inputs"]:
                raise ConfigurationError("schedule: give `inputs` or `inputs_fn`, not both")
            found = load_object(self.inputs_fn, "schedule.inputs_fn")
            if not callable(found):
                raise ConfigurationError(f"schedule.inputs_fn: {self.inputs_fn!r} is not a function")
            fields["inputs"] = found
        return _value(Schedule, "schedule", fields)


_PARTITIONS: dict[str, type[DailyPartitions] | type[StaticPartitions]] = {
    "daily": DailyPartitions,
    "static": StaticPartitions,
}


@yaml_fields(DailyPartitions, StaticPartitions, optional=True)
class PartitionsModel(Model):
    """Daily (`start`, `end`, `timezone`) or static (`keys`) partitions (see `flujo_dagster.DailyPartitions`,
    `flujo_dagster.StaticPartitions`); replace the pipeline's own."""

    type: Literal["daily", "static"]

    def resolve(self) -> Partitions:
        """The `DailyPartitions` or `StaticPartitions`: only their own fields may be given, theirs without a
        default must be."""
        kind = _PARTITIONS[self.type]
        given = self.model_dump(exclude_unset=True, exclude={"type"})
        own = [f.name for f in dataclasses.fields(kind)]
        foreign = sorted(set(given) - set(own))
        if foreign:
            allowed = ", ".join(f"`{name}`" for name in own)
            raise ConfigurationError(f"partitions: {self.type} partitions take {allowed}, not {foreign}")
        required = [f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING]
        missing = [name for name in required if given.get(name) is None]
        if missing:
            raise ConfigurationError(
                f"partitions: {self.type} partitions need {', '.join(f'`{name}`' for name in missing)}"
                + (" (YYYY-MM-DD)" if self.type == "daily" else "")
            )
        if kind is DailyPartitions:
            return _value(DailyPartitions, "partitions", given)
        return _value(StaticPartitions, "partitions", given)
