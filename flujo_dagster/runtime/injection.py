"""Filling the parameters Dagster owns (resources, the execution context) and building an agent step's `deps`.

The runtime knows nothing of Dagster: an op hands the leaf executor an `Injector` that looks the values up."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Protocol

from flujo_dagster.dsl.injection import ContextKind
from flujo_dagster.dsl.keys import key_parameters, step_injections
from flujo_dagster.dsl.steps import AgentStep, Step
from flujo_dagster.errors import ConfigurationError

__all__ = ["Injector", "build_deps", "injected_values"]


class Injector(Protocol):
    """Where injected values come from (the adapter's `OpInjector` reads the op's context)."""

    def resource(self, key: str, *, path: str) -> object:
        """The resource under `key`; `ConfigurationError` naming `path` when there is none."""
        ...

    def context(self, kind: ContextKind, *, path: str) -> object:
        """The execution context of the op running step `path`, of `kind` (`op` or `asset`)."""
        ...


def injected_values(step: Step, injector: Injector | None, path: str) -> dict[str, object]:
    """Parameter -> value for every parameter of `step` (or of its `deps`) that Dagster fills."""
    wanted = step_injections(step)
    if not wanted:
        return {}
    if injector is None:
        raise ConfigurationError(
            f"step {path} asks for {', '.join(sorted(wanted))} from Dagster, but it runs without resources or an "
            "execution context; run it through build_definitions or run_pipeline"
        )
    values: dict[str, object] = {}
    for name, injection in wanted.items():
        if injection.resource_key is not None:
            values[name] = injector.resource(injection.resource_key, path=path)
        elif injection.context is not None:
            values[name] = injector.context(injection.context, path=path)
    return values


async def build_deps(step: AgentStep, keys: Mapping[str, object], injector: Injector | None, path: str) -> object:
    """The pydantic-ai `deps` of one run of `step`: its `deps` callable called with the keys it reads (from
    `keys`) and what Dagster fills; awaited when it returns an awaitable. None without `deps`."""
    if step.deps is None:
        return None
    arguments = {k: keys[k] for k in key_parameters(step.deps, step.resources)}
    arguments.update(injected_values(step, injector, path))
    result = step.deps(**arguments)
    if inspect.isawaitable(result):
        return await result
    return result
