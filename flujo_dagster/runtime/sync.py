"""Calling blocking work from sync code that may already be inside a running event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio.from_thread
import anyio.to_thread

__all__ = ["call_blocking"]

T = TypeVar("T")


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def call_blocking(fn: Callable[[], T]) -> T:
    """Call `fn()`; when a loop is running in this thread (a notebook, an async test), run it in anyio's
    worker thread instead, so that code inside `fn` can start its own event loop."""
    if not _in_running_loop():
        return fn()
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(anyio.to_thread.run_sync, fn)
