"""Calling a function step: sync or async, with an optional timeout, inside the caller's event loop."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import anyio
import anyio.to_thread

from flujo_dagster.dsl.steps import FunctionStep

__all__ = ["StepTimeoutError", "call_function_step"]


class StepTimeoutError(TimeoutError):
    """A step did not finish within its `timeout_s`."""


async def call_function_step(step: FunctionStep, kwargs: Mapping[str, object], *, path: str) -> object:
    """Run `step.fn(**kwargs)`; await it when async. With `timeout_s`, a sync function runs in anyio's worker
    thread so the wait can stop (the work itself cannot be stopped; it finishes in the background)."""
    fn = step.fn
    if step.timeout_s is None:
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            return await result
        return result
    try:
        with anyio.fail_after(step.timeout_s):
            if inspect.iscoroutinefunction(fn):
                return await fn(**kwargs)
            return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs), abandon_on_cancel=True)
    except TimeoutError as exc:
        raise StepTimeoutError(
            f"step {path} did not finish within timeout_s={step.timeout_s}; raise timeout_s or make the step faster"
        ) from exc
