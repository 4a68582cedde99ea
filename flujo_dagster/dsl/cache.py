"""`Cache`: how an agent step's model requests are cached (pure data; the runtime's call cache applies it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias

from flujo_dagster.dsl.durations import duration, optional_duration
from flujo_dagster.errors import ConfigurationError

__all__ = ["DEFAULT_CACHE", "Cache", "CacheLike", "cache_policy"]


@dataclass(frozen=True, kw_only=True)
class Cache:
    """A caching policy for agent steps' model requests (docs/cache.md).

    `ttl`: how long a stored response is served (None: until it is deleted). `lease`: how long a process that
    claimed a request may take before another identical request stops waiting for it and makes its own (set it
    above the slowest request you expect).
    """

    ttl: timedelta | None = timedelta(days=7)
    lease: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        optional_duration(self.ttl, "Cache ttl", positive=True)
        duration(self.lease, "Cache lease", positive=True)


DEFAULT_CACHE = Cache()
"""The policy of a pipeline and a step that say nothing: cached for 7 days."""

CacheLike: TypeAlias = Cache | bool | None
"""What `cache=` takes: a `Cache`, `True` (the default policy), `False` (never cached: fresh answers), or None
(a step: the pipeline's policy; a pipeline: the default)."""


def _checked(value: object, where: str) -> CacheLike:
    if value is None or isinstance(value, Cache | bool):
        return value
    raise ConfigurationError(f"{where}: cache must be a Cache, True, False or None, got {type(value).__name__}")


def cache_policy(step_cache: object, pipeline_cache: object, *, where: str = "cache") -> Cache | None:
    """The policy a step's requests follow: the step's own `cache=` when given, else the pipeline's, else the
    default; None when caching is off (`False`). `ConfigurationError` for a value of another type."""
    step_value, pipeline_value = _checked(step_cache, where), _checked(pipeline_cache, where)
    chosen = step_value if step_value is not None else pipeline_value
    if chosen is None or chosen is True:
        return DEFAULT_CACHE
    if chosen is False:
        return None
    return chosen
