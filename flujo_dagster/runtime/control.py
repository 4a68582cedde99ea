"""The decisions of control flow, shared by the expanded routers and loop gates and by the interpreter: which
arm a branch takes, and whether a loop stops."""

from __future__ import annotations

from collections.abc import Mapping

from flujo_dagster.dsl.control import Branch, Loop
from flujo_dagster.dsl.flow import callable_reads
from flujo_dagster.dsl.steps import Step
from flujo_dagster.errors import ControlFlowError

__all__ = ["branch_arm", "loop_should_exit"]


def branch_arm(branch: Branch, state: Mapping[str, object], path: str) -> tuple[str, tuple[Step, ...]]:
    """The (label, steps) of the arm a branch takes for the keys in `state`; `ControlFlowError` when no case
    matches and there is no default."""
    if isinstance(branch.on, str):
        value: object = state[branch.on]
    else:
        value = branch.on(**{k: state[k] for k in callable_reads(branch.on)})
    try:
        if value in branch.cases:
            return repr(value), branch.cases[value]
    except TypeError as exc:  # unhashable value
        raise ControlFlowError(f"branch {path}: selector value {value!r} is not hashable") from exc
    if branch.default is not None:
        return "default", branch.default
    known = ", ".join(repr(v) for v in branch.cases)
    raise ControlFlowError(
        f"branch {path}: no case matches value {value!r} and there is no default; known cases: {known}. "
        "Add a case or a default."
    )


def loop_should_exit(loop: Loop, state: Mapping[str, object], iteration: int, path: str) -> bool:
    """Whether the loop stops after `iteration` (1-based); `ControlFlowError` when it is exhausted and
    `on_exhausted="fail"`."""
    if loop.until(**{k: state[k] for k in callable_reads(loop.until)}):
        return True
    if iteration < loop.max_iterations:
        return False
    if loop.on_exhausted == "continue":
        return True
    raise ControlFlowError(
        f"loop {path} did not meet its `until` condition within max_iterations={loop.max_iterations}. Raise "
        "max_iterations, or pass on_exhausted='continue' to go on with the last iteration's keys."
    )
