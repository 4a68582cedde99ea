"""Calling a function step: sync or async, with an optional timeout, inside the caller's event loop."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVar

import anyio
import anyio.to_thread

from flujo_dagster.dsl.steps import FunctionStep
from flujo_dagster.errors import StepTimeoutError

__all__ = ["call_function_step", "with_timeout"]

T = TypeVar("T")


def _is_async(fn: Callable[..., object]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


async def with_timeout(timeout: timedelta | None, work: Callable[[], Awaitable[T]], *, path: str) -> T:
    """Await `work()`; past `timeout` cancel it and raise `StepTimeoutError` naming the step. A
    `TimeoutError` the step raises itself passes through unchanged."""
    if timeout is None:
        return await work()
    with anyio.move_on_after(timeout.total_seconds()) as scope:
        return await work()
    if scope.cancelled_caught:
        raise StepTimeoutError(
            f"step {path} did not finish within its timeout of {timeout.total_seconds():g} s; raise timeout= or "
            "make the step faster"
        )
    raise AssertionError("unreachable: a finished step returns")  # pragma: no cover


async def call_function_step(step: FunctionStep, kwargs: Mapping[str, object], *, path: str) -> object:
    """Run `step.fn(**kwargs)`; await it when async. With a `timeout`, a sync function runs in anyio's worker
    thread so the wait can stop (the work itself cannot be stopped; it finishes in the background)."""
    fn = step.fn
    if step.timeout is None:
        result = fn(**kwargs)
        if inspect.isawaitable(result):
            return await result
        return result

    async def work() -> object:
        if _is_async(fn):
            return await fn(**kwargs)  # type: ignore[misc]
        return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs), abandon_on_cancel=True)

    return await with_timeout(step.timeout, work, path=path)
