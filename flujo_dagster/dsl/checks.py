"""`Check`: a user's check on one key's value, attached to a pipeline (`Pipeline(..., checks=[...])`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass

__all__ = ["Check"]


@dataclass(frozen=True)
class Check:
    """A check on the value of asset key `key`: `fn(value)` returns True when the value is acceptable
    (`Check("summary", fn=not_empty)`; everything after the key is keyword-only).

    It runs in the op that produces the key, right after the value is stored, and is reported as a Dagster
    asset check named `name` (default: the function's name). A failing `blocking` check fails that op, so no
    step downstream of it runs; a non-blocking one is reported as a warning.
    """

    key: str
    _: KW_ONLY
    fn: Callable[[object], bool]
    name: str = ""
    blocking: bool = True
    description: str | None = None

    def __post_init__(self) -> None:
        if inspect.iscoroutinefunction(self.fn):  # its coroutine would be truthy: the check would always pass
            raise TypeError(
                f"Check on {self.key!r}: the check function must be synchronous and return a bool, got an async "
                "function; compute what it needs in a step and check that key instead"
            )
        if not self.name:  # a lambda without `name=` is called `<key>_check`
            fn_name = getattr(self.fn, "__name__", "<lambda>")
            object.__setattr__(self, "name", f"{self.key}_check" if fn_name.startswith("<") else fn_name)
