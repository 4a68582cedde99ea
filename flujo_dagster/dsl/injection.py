"""Which step parameters Dagster fills (resources, the execution context) rather than context keys.

Decided from annotations alone, without importing Dagster: a class whose MRO holds one of Dagster's resource
or context base classes (by name, defined in a `dagster` module) is one. Every function here is total: an odd
annotation is simply not injected."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "ContextKind",
    "Injection",
    "ResourcesLike",
    "classify",
    "injection_for",
    "resource_pairs",
]

ContextKind = Literal["op", "asset"]
ResourcesLike: TypeAlias = Mapping[str, str] | Sequence[str]
"""`resources=` of `@step`/`agent_step`: parameter name -> resource key, or names that are both."""

_RESOURCE_BASES = frozenset({"ResourceDefinition", "ConfigurableResourceFactory", "TreatAsResourceParam"})
"""Dagster's own test for a resource parameter (`@asset def a(db: DatabaseResource)`) uses these bases."""
_CONTEXT_BASES: Mapping[str, ContextKind] = {"OpExecutionContext": "op", "AssetExecutionContext": "asset"}
_RESOURCE_PARAM = ("resource_param",)
"""The metadata of Dagster's `ResourceParam[T]` (`Annotated[T, "resource_param"]`)."""


@dataclass(frozen=True)
class Injection:
    """What fills one parameter: the resource under `resource_key`, or the op's execution context (`context`
    says which kind: Dagster's `OpExecutionContext` or `AssetExecutionContext`)."""

    resource_key: str | None = None
    context: ContextKind | None = None


def classify(annotation: object) -> Literal["resource"] | ContextKind | None:
    """`resource` for a Dagster resource class (or `ResourceParam[T]`), `op`/`asset` for Dagster's execution
    contexts, None for anything else (never raises)."""
    try:
        return _classify_cached(annotation)
    except TypeError:  # an unhashable annotation
        return _classify(annotation)


@functools.lru_cache(maxsize=1024)
def _classify_cached(annotation: object) -> Literal["resource"] | ContextKind | None:
    return _classify(annotation)


def _classify(annotation: object) -> Literal["resource"] | ContextKind | None:
    if typing.get_origin(annotation) is typing.Annotated:
        if tuple(getattr(annotation, "__metadata__", ())) == _RESOURCE_PARAM:
            return "resource"
        annotation = typing.get_args(annotation)[0]
    if not isinstance(annotation, type):
        return None
    try:
        mro = inspect.getmro(annotation)
    except (AttributeError, TypeError):
        return None
    for cls in mro:
        module = str(getattr(cls, "__module__", "") or "")
        if module != "dagster" and not module.startswith("dagster."):
            continue
        name = str(getattr(cls, "__name__", ""))
        if name in _RESOURCE_BASES:
            return "resource"
        if name in _CONTEXT_BASES:
            return _CONTEXT_BASES[name]
    return None


def resource_pairs(resources: ResourcesLike | None) -> tuple[tuple[str, str], ...]:
    """`resources=` as (parameter, resource key) pairs; a bare string is one name, not its letters."""
    if resources is None:
        return ()
    if isinstance(resources, str):
        return ((resources, resources),)
    if isinstance(resources, Mapping):
        return tuple((str(p), str(k)) for p, k in resources.items())
    return tuple((str(name), str(name)) for name in resources)


def injection_for(parameter: str, annotation: object, declared: Mapping[str, str]) -> Injection | None:
    """What fills `parameter` (annotated `annotation`; `declared` maps parameters to resource keys), or None
    when it is a context key. A declared resource wins over the annotation."""
    if parameter in declared:
        return Injection(resource_key=declared[parameter])
    kind = classify(annotation)
    if kind == "resource":
        return Injection(resource_key=parameter)
    if kind is not None:
        return Injection(context=kind)
    return None
