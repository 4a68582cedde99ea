"""`@step` and `agent_step(...)`: the friendly constructors of function and agent steps."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import overload

from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.cache import Cache, cache_policy
from flujo_dagster.dsl.injection import ResourcesLike, resource_pairs
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Retry
from flujo_dagster.interfaces import AgentLike, ModelLike

__all__ = ["agent_step", "step"]


@overload
def step(fn: Callable[..., object], /) -> FunctionStep: ...


@overload
def step(
    *,
    name: str | None = None,
    input_keys: Sequence[str] | None = None,
    output_keys: Sequence[str] | None = None,
    retry: Retry | None = None,
    timeout: timedelta | None = None,
    inline: bool = False,
    resources: ResourcesLike | None = None,
) -> Callable[[Callable[..., object]], FunctionStep]: ...


def step(
    fn: Callable[..., object] | None = None,
    /,
    *,
    name: str | None = None,
    input_keys: Sequence[str] | None = None,
    output_keys: Sequence[str] | None = None,
    retry: Retry | None = None,
    timeout: timedelta | None = None,
    inline: bool = False,
    resources: ResourcesLike | None = None,
) -> FunctionStep | Callable[[Callable[..., object]], FunctionStep]:
    """Turn a function (sync or async) into a pipeline step.

    Used bare (`@step`) or with options (`@step(name=..., output_keys=[...], retry=Retry(...))`).
    Parameters named after context keys are the keys read; see `FunctionStep` for what is written.
    A sync function's timeout stops the waiting, not the work (it runs in a worker thread).

    A parameter annotated with a Dagster `ConfigurableResource` subclass receives the resource whose key is the
    parameter's name; `resources={"db": "warehouse"}` (parameter -> resource key, or a list of names that are
    both) declares resource parameters of any annotation. A parameter annotated `dagster.OpExecutionContext`
    or `dagster.AssetExecutionContext` receives the op's context. None of these are keys.
    """

    def wrap(func: Callable[..., object]) -> FunctionStep:
        return FunctionStep(
            name=name if name is not None else func.__name__,
            fn=func,
            input_keys=tuple(input_keys) if input_keys is not None else None,
            output_keys=tuple(output_keys) if output_keys is not None else None,
            retry=retry if retry is not None else Retry(),
            timeout=timeout,
            inline=inline,
            resources=resource_pairs(resources),
        )

    if fn is not None:
        return wrap(fn)
    return wrap


def agent_step(
    name: str,
    *,
    agent: AgentLike | None,
    prompt: str | Callable[..., str],
    output_key: str | None = None,
    model: str | ModelLike | None = None,
    model_settings: Mapping[str, object] | None = None,
    retry: Retry | None = None,
    timeout: timedelta | None = None,
    inline: bool = False,
    budget: Budget | None = None,
    pool: str | None = None,
    deps: Callable[..., object] | None = None,
    resources: ResourcesLike | None = None,
    cache: Cache | bool | None = None,
) -> AgentStep:
    """A step that runs a pydantic-ai `Agent`.

    `prompt` is a `str.format` template over keys ("Summarise {sources}") or a callable whose parameters are
    keys. The output goes to `output_key`, or to the key named like the step. `model` overrides the agent's
    model (`provider:model`); build agents with `defer_model_check=True` so no key is needed at import.
    `budget` limits this step's spending (on top of the pipeline's); a budgeted step needs `max_tokens` in
    its (or its agent's) model settings. `pool` names the Dagster concurrency pool of the step's op (default
    `flujo/<provider>`, e.g. `flujo/openai`): set a limit on it (`dagster instance concurrency set flujo/openai
    4`) to cap concurrent calls to a provider across runs; inline ops honour the same limit per process.

    `deps` builds the pydantic-ai `deps` of each agent run (the agent's tools get it as `ctx.deps`): it is
    called before every run with its parameters filled like a `@step` function's (keys, resources by annotation
    or by `resources=`, the execution context), sync or async.

    `cache` sets how its model requests are cached (docs/cache.md): a `Cache` (its expiry), `False` for fresh
    answers every time, None (default) for the pipeline's policy.
    """
    cache_policy(cache, None, where=f"agent step {name!r}")
    if deps is not None and not callable(deps):
        raise TypeError(
            f"agent step {name!r}: deps must be a callable returning the agent's deps (its parameters are keys or "
            f"resources), not {type(deps).__name__}"
        )
    return AgentStep(
        name=name,
        agent=agent,
        prompt=prompt,
        output_key=output_key,
        model=model,
        model_settings=dict(model_settings) if model_settings is not None else None,
        retry=retry if retry is not None else Retry(),
        timeout=timeout,
        inline=inline,
        budget=budget,
        pool=pool,
        deps=deps,
        resources=resource_pairs(resources),
        cache=cache,
    )
