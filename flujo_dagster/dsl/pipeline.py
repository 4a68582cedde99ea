"""`Pipeline`: a named, typed sequence of steps over a pydantic context model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic

from pydantic import BaseModel
from typing_extensions import TypeForm, TypeVar

from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.cache import Cache, cache_policy
from flujo_dagster.dsl.checks import Check
from flujo_dagster.dsl.flow import flow_of_steps
from flujo_dagster.dsl.keys import StepKeys, resolve_keys
from flujo_dagster.dsl.schedules import Partitions, Schedule
from flujo_dagster.dsl.steps import Step, StepsLike, as_steps
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.interfaces import AssetKeyLike

__all__ = ["AssetKeyPath", "AssetRef", "Ctx", "Pipeline", "asset_key_path"]

AssetKeyPath = tuple[str, ...]
"""An asset key as the DSL keeps it: the parts of its path (`("dbt", "orders")` for `AssetKey(["dbt", "orders"])`)."""
AssetRef = AssetKeyLike | str | Iterable[str]
"""How a pipeline names another asset: an `AssetKey` (anything with a `.path`), `"dbt/orders"`, or
`["dbt", "orders"]`."""

Ctx = TypeVar("Ctx", bound=BaseModel, covariant=True, default=BaseModel)
"""A pipeline's context model, inferred from `Pipeline(..., context=MyModel)`. A bare `Pipeline` annotation
means `Pipeline[BaseModel]`, which every pipeline is."""


def asset_key_path(pipeline: str, what: str, ref: object) -> AssetKeyPath:
    """`ref` (an `AssetRef`) as the parts of an asset key path; `ConfigurationError` naming the pipeline and `what`
    (the context key or `deps`) when it is none."""
    parts: object
    if isinstance(ref, str):
        parts = ref.split("/")
    elif hasattr(ref, "path"):
        parts = ref.path
    else:
        parts = ref
    if isinstance(parts, Iterable) and not isinstance(parts, str | bytes | Mapping):
        path = tuple(parts)
        if path and all(isinstance(p, str) and p for p in path):
            return path
    raise ConfigurationError(
        f"Pipeline {pipeline!r}: {what} names the asset {ref!r}, which is not an asset key. Pass an AssetKey, a "
        "string such as 'dbt/orders' (parts split on '/'), or a sequence of non-empty strings."
    )


def _upstream(pipeline: str, upstream: Mapping[str, AssetRef]) -> Mapping[str, AssetKeyPath]:
    if not isinstance(upstream, Mapping):
        raise ConfigurationError(
            f"Pipeline {pipeline!r}: upstream must map context keys to asset keys "
            f"({{'orders': AssetKey(['dbt', 'orders'])}}), got {upstream!r}."
        )
    for key in upstream:
        if not isinstance(key, str):
            raise ConfigurationError(f"Pipeline {pipeline!r}: upstream key {key!r} is not a context key name (str).")
    paths = {key: asset_key_path(pipeline, f"upstream key {key!r}", ref) for key, ref in upstream.items()}
    return MappingProxyType(paths)


def _deps(pipeline: str, deps: object) -> tuple[AssetKeyPath, ...]:
    """Each dep as an asset key path (each item of the list is one asset key; a lone key or str is one dep)."""
    alone = isinstance(deps, str) or not isinstance(deps, Iterable) or hasattr(deps, "path")
    listed: Iterable[object] = [deps] if alone else deps  # type: ignore[assignment]
    return tuple(dict.fromkeys(asset_key_path(pipeline, "deps", ref) for ref in listed))


def _check_context(name: str, context: object) -> None:
    if not (isinstance(context, type) and issubclass(context, BaseModel)):
        raise ConfigurationError(
            f"Pipeline {name!r}: context must be a pydantic BaseModel subclass, got {context!r}. "
            "Declare the keys as fields of a model and pass the class."
        )


@dataclass(frozen=True, init=False)
class Pipeline(Generic[Ctx]):
    """A pipeline: a name, a context model whose fields are the keys, steps, and the keys kept as assets.

    Fields without a default that no step writes are the run's inputs, except the keys `upstream` loads from
    other assets (`upstream={"orders": AssetKey(["dbt", "orders"])}`); `deps` are assets waited for, not read.
    `pipeline >> step` gives a new pipeline; so does `pipeline >> other_pipeline` when both use the same context
    model. Generic over the context model (`Pipeline[MyModel]`, inferred), so a run's final context is typed as
    `MyModel`.
    `context_asset=True` also makes the final context an asset (`<pipeline>/final_context`) of a pipeline with
    assets; by default it is only the run's result.
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
    upstream: Mapping[str, AssetKeyPath] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """Context keys loaded from other assets when the run starts (not run inputs): key -> asset key path."""
    deps: tuple[AssetKeyPath, ...] = field(default=())
    """Assets the pipeline's assets depend on without reading them (lineage and ordering only)."""
    context_asset: bool = False
    cache: Cache | bool | None = None
    """How its agent steps' model requests are cached (docs/cache.md): None, the default policy."""

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
        upstream: Mapping[str, AssetRef] | None = None,
        deps: Iterable[AssetRef] = (),
        context_asset: bool = False,
        cache: Cache | bool | None = None,
    ) -> None:
        _check_context(name, context)
        cache_policy(cache, None, where=f"pipeline {name!r}")
        values = {"name": name, "context": context, "steps": as_steps(steps), "assets": tuple(assets)}
        values |= {"description": description, "budget": budget, "schedule": schedule, "partitions": partitions}
        values |= {"checks": tuple(checks), "context_asset": context_asset, "_initial": None, "cache": cache}
        values |= {"upstream": _upstream(name, upstream or {}), "deps": _deps(name, deps)}
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
        """The run's required inputs: fields without a default that no step writes and no upstream asset gives."""
        written = self.written_keys()
        return tuple(
            k
            for k in self.context.model_fields
            if not self.has_default(k) and k not in written and k not in self.upstream
        )

    def run_input_keys(self) -> tuple[str, ...]:
        """Every key a run's inputs may give: the required inputs and every defaulted field, never an upstream
        key (its value is loaded from its asset)."""
        inputs = set(self.input_keys())
        return tuple(
            k for k in self.context.model_fields if k not in self.upstream and (k in inputs or self.has_default(k))
        )

    def initial_keys(self) -> tuple[str, ...]:
        """Keys that have a value when the run starts: the run's inputs (`run_input_keys`) and the upstream keys."""
        initial: tuple[str, ...] | None = self.__dict__["_initial"]
        if initial is None:
            given = set(self.run_input_keys())
            initial = tuple(k for k in self.context.model_fields if k in given or k in self.upstream)
            object.__setattr__(self, "_initial", initial)
        return initial


def _composed(first: Pipeline[Ctx], other: StepsLike | Pipeline) -> Pipeline[Ctx]:
    """`first >> other`: `other`'s steps appended; a pipeline's assets, checks, upstream keys and deps too (same
    context model; one key loaded from two assets is refused), and its `context_asset=True`."""
    assets, checks, upstream, deps = first.assets, first.checks, dict(first.upstream), first.deps
    context_asset = first.context_asset
    if isinstance(other, Pipeline):
        if other.context is not first.context:
            raise ConfigurationError(
                f"Cannot compose pipeline {first.name!r} (context {first.context.__name__}) with pipeline "
                f"{other.name!r} (context {other.context.__name__}): both must use the same context model."
            )
        added: tuple[Step, ...] = other.steps
        assets = (*assets, *(a for a in other.assets if a not in assets))
        checks = (*checks, *(c for c in other.checks if c not in checks))
        upstream = _merged_upstream(first, other)
        deps = (*deps, *(d for d in other.deps if d not in deps))
        context_asset = context_asset or other.context_asset
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
        upstream=upstream,
        deps=deps,
        context_asset=context_asset,
        cache=first.cache,
    )


def _merged_upstream(first: Pipeline, other: Pipeline) -> dict[str, AssetKeyPath]:
    """Both pipelines' upstream keys; `ConfigurationError` when they load one key from different assets."""
    merged = dict(first.upstream)
    for key, path in other.upstream.items():
        if merged.setdefault(key, path) != path:
            raise ConfigurationError(
                f"Cannot compose pipeline {first.name!r} with pipeline {other.name!r}: upstream key {key!r} is "
                f"loaded from {'/'.join(merged[key])!r} in one and from {'/'.join(path)!r} in the other."
            )
    return merged
