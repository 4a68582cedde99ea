"""Several `build_definitions` results and `FlujoPipelineComponent`s in one code location.

Dagster merges definitions only when each resource key holds the very same object in all of them, and refuses two
sensors of one name unless they are the same object. So equal resources are shared (`shared`: the first object
equal to a value stands for it, process-wide), and the decide job and the sensors are one object per setting. What
still differs is a conflict: `LocationClaims` finds it among the components of one location and raises a
`ConfigurationError` naming the key and both components, before Dagster's own merge error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dagster import Definitions, JobDefinition, SensorDefinition

from flujo_dagster.adapter.storage.approval_settings import ApprovalSettings
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.adapter.storage.resources import AgentRuntime
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import DECIDE_JOB
from flujo_dagster.pricing.prices import PriceBook

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = ["LocationClaims", "shared", "shared_import"]

_lock = threading.Lock()
_seen: dict[type, list[object]] = {}
_imported: dict[str, object] = {}


def shared(value: object) -> object:
    """The first object of `value`'s type seen in this process that equals it (`value` itself the first time).
    Only flujo's own settings objects are shared (the IO manager, `ApprovalSettings`, a `PriceBook`): they hold
    nothing but settings compared by value. Anything else, a user's resource or an `AgentRuntime` (whose model
    objects compare equal when configured alike, yet each records its own calls), is its own."""
    if not isinstance(value, PydanticJsonIOManager | ApprovalSettings | PriceBook):
        return value
    with _lock:
        seen = _seen.setdefault(type(value), [])
        for earlier in seen:
            if earlier == value:
                return earlier
        seen.append(value)
        return value


def shared_import(path: str, build: Callable[[], object]) -> object:
    """What `build` gives for import path `path`, built once per process (a factory named by several components
    builds one object, which they then share)."""
    with _lock:
        if path not in _imported:
            _imported[path] = build()
        return _imported[path]


def _describe(value: object) -> str:
    """A resource for a conflict message: its repr, cut short; what it holds outside its repr (an `AgentRuntime`'s
    model objects and prices set in Python) named after it."""
    text = repr(value)
    if not text.startswith(type(value).__name__):
        text = f"{type(value).__name__} {text}"
    shown = text if len(text) <= 120 else text[:117] + "..."
    hidden = value.python_only_summary() if isinstance(value, AgentRuntime) else ""
    return f"{shown} ({hidden})" if hidden else shown


class LocationClaims:
    """What each component of one code location put under each resource key and sensor name, to report a conflict
    by name (Dagster's own error names neither the components nor what to do)."""

    _keep = 16
    _lock = threading.Lock()
    _by_tree: dict[int, tuple[object, LocationClaims]] = {}

    def __init__(self) -> None:
        self.resources: dict[str, tuple[object, str]] = {}
        self.shared: dict[str, tuple[object, str]] = {}

    @classmethod
    def of(cls, tree: object) -> LocationClaims:
        """The claims of the location whose component tree is `tree` (kept alive while its claims are kept)."""
        with cls._lock:
            found = cls._by_tree.get(id(tree))
            if found is None or found[0] is not tree:
                while len(cls._by_tree) >= cls._keep:
                    cls._by_tree.pop(next(iter(cls._by_tree)))
                found = (tree, cls())
                cls._by_tree[id(tree)] = found
            return found[1]

    def claim(self, defs: Definitions, where: str) -> Definitions:
        """Record the resources and sensors of `defs`, built by component `where`, and return `defs` without the
        sensors and the decide job an earlier component of the location already holds (Dagster copies each
        component's sensors and jobs, so the copies would clash). `ConfigurationError` when a resource key or a
        sensor name already holds something else."""
        resources: dict[str, Any] = dict(defs.resources or {})
        for key, value in resources.items():
            earlier = self.resources.setdefault(key, (value, where))
            if earlier[0] is not value:
                raise ConfigurationError(
                    f"resource {key!r}: component {where} gives {_describe(value)}, but component {earlier[1]} of "
                    f"the same code location gave {_describe(earlier[0])}; a code location has one resource per key. "
                    "Give both components the same settings (the same agent_runtime import path, the same prices "
                    "and strict_pricing, or put prices in pyproject.toml [tool.flujo_dagster.pricing]), or move one "
                    "into its own code location."
                )
        sensors = [s for s in defs.sensors or [] if isinstance(s, SensorDefinition) and self._first(s, where)]
        jobs = [j for j in defs.jobs or [] if j.name != DECIDE_JOB or self._first(j, where)]
        return Definitions(
            assets=defs.assets,
            asset_checks=defs.asset_checks,
            schedules=defs.schedules,
            sensors=sensors,
            jobs=jobs,
            resources=defs.resources,
            executor=defs.executor,
            loggers=defs.loggers,
            metadata=defs.metadata,
        )

    def _first(self, shared_def: SensorDefinition | JobDefinition | UnresolvedAssetJobDefinition, where: str) -> bool:
        """Whether `shared_def` is the first of its name in the location; `ConfigurationError` when an earlier
        component holds another definition of that name."""
        earlier = self.shared.setdefault(shared_def.name, (shared_def, where))
        if earlier[0] is shared_def:
            return earlier[1] == where
        raise ConfigurationError(
            f"{shared_def.name!r}: components {earlier[1]} and {where} of one code location configure it differently "
            "(webserver URL, approvals interval or approval settings); give them the same settings "
            "(FLUJO_DAGSTER_WEBSERVER_URL, FLUJO_DAGSTER_APPROVALS_INTERVAL_S, docs/configuration.md)."
        )
