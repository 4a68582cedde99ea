"""`Pipeline`: a named, typed sequence of steps over a pydantic context model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic

from pydantic import BaseModel
from typing_extensions import TypeForm, TypeVar

from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.checks import Check
from flujo_dagster.dsl.flow import flow_of_steps
from flujo_dagster.dsl.keys import StepKeys, resolve_keys
from flujo_dagster.dsl.schedules import Partitions, Schedule
from flujo_dagster.dsl.steps import Step, StepsLike, as_steps
from flujo_dagster.errors import ConfigurationError

__all__ = ["Ctx", "Pipeline"]

Ctx = TypeVar("Ctx", bound=BaseModel, covariant=True, default=BaseModel)
"""A pipeline's context model, inferred from `Pipeline(..., context=MyModel)`. A bare `Pipeline` annotation
means `Pipeline[BaseModel]`, which every pipeline is."""


def _check_context(name: str, context: object) -> None:
    if not (isinstance(context, type) and issubclass(context, BaseModel)):
        raise ConfigurationError(
            f"Pipeline {name!r}: context must be a pydantic BaseModel subclass, got {context!r}. "
            "Declare the keys as fields of a model and pass the class."
        )


@dataclass(frozen=True, init=False)
class Pipeline(Generic[Ctx]):
    """A pipeline: a name, a context model whose fields are the keys, steps, and the keys kept as assets.

    Fields without a default that no step writes are the run's inputs. `pipeline >> step` gives a new
    pipeline; so does `pipeline >> other_pipeline` when both use the same context model. Generic over the
    context model (`Pipeline[MyModel]`, inferred), so a run's final context is typed as `MyModel`.
    """

    name: str
    context: type[Ctx]
    steps: tuple[Step, ...]
    assets: tuple[str, ...] = field(default=())
    description: str | None = None
    budget: Budget | None = None
    schedule: Schedule | None = None
    partitions: Partitions | None = None
    checks: tuple[Check, ...] = field(default=())

    def __init__(
        self,
        name: str,
        *,
        context: type[Ctx],
        steps: StepsLike,
        assets: Iterable[str] = (),
        description: str | None = None,
        budget: Budget | None = None,
        schedule: Schedule | None = None,
        partitions: Partitions | None = None,
        checks: Iterable[Check] = (),
    ) -> None:
        _check_context(name, context)
        values = {"name": name, "context": context, "steps": as_steps(steps), "assets": tuple(assets)}
        values |= {"description": description, "budget": budget, "schedule": schedule, "partitions": partitions}
        values |= {"checks": tuple(checks), "_initial": None}
        values["_fields"] = {n: info.rebuild_annotation() for n, info in context.model_fields.items()}
        for attribute, value in values.items():
            object.__setattr__(self, attribute, value)

    def __rshift__(self, other: StepsLike | Pipeline) -> Pipeline[Ctx]:
        return _composed(self, other)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    @property
    def fields(self) -> dict[str, TypeForm[object]]:
        """The context's keys and their annotations (with the field's constraints, e.g. `Field(gt=0)`, kept as
        `Annotated` metadata so that stored values are checked against them too)."""
        fields: dict[str, TypeForm[object]] = self.__dict__["_fields"]
        return fields

    def keys_of(self, step: Step) -> StepKeys:
        """The keys `step` reads and writes in this pipeline."""
        return resolve_keys(step, self.fields)

    def written_keys(self) -> set[str]:
        """Every key some step writes, at any depth, on some path."""
        return set(flow_of_steps(self.steps, self.fields).may)

    def has_default(self, key: str) -> bool:
        """True when the context field `key` has a default value (or factory)."""
        return not self.context.model_fields[key].is_required()

    def input_keys(self) -> tuple[str, ...]:
        """The run's required inputs: fields without a default that no step writes."""
        written = self.written_keys()
        return tuple(k for k in self.context.model_fields if not self.has_default(k) and k not in written)

    def initial_keys(self) -> tuple[str, ...]:
        """Keys that have a value when the run starts: the inputs and every defaulted field."""
        initial: tuple[str, ...] | None = self.__dict__["_initial"]
        if initial is None:
            inputs = set(self.input_keys())
            initial = tuple(k for k in self.context.model_fields if k in inputs or self.has_default(k))
            object.__setattr__(self, "_initial", initial)
        return initial


def _composed(first: Pipeline[Ctx], other: StepsLike | Pipeline) -> Pipeline[Ctx]:
    """`first >> other`: `other`'s steps appended; a pipeline's assets and checks too (same context model)."""
    assets, checks = first.assets, first.checks
    if isinstance(other, Pipeline):
        if other.context is not first.context:
            raise ConfigurationError(
                f"Cannot compose pipeline {first.name!r} (context {first.context.__name__}) with pipeline "
                f"{other.name!r} (context {other.context.__name__}): both must use the same context model."
            )
        added: tuple[Step, ...] = other.steps
        assets = (*assets, *(a for a in other.assets if a not in assets))
        checks = (*checks, *(c for c in other.checks if c not in checks))
    else:
        added = as_steps(other)
    return Pipeline(
        first.name,
        context=first.context,
        steps=(*first.steps, *added),
        assets=assets,
        description=first.description,
        budget=first.budget,
        schedule=first.schedule,
        partitions=first.partitions,
        checks=checks,
    )
