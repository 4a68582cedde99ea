"""Control-flow nodes: `Loop`, `Branch`, `Parallel`. Pure data; constructing runs nothing."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from flujo_dagster.dsl.steps import Retry, Step, StepsLike, as_steps

__all__ = ["Branch", "Group", "Loop", "Map", "Parallel", "runs_in_one_op"]


def _base(obj: Step, name: str, inline: bool) -> None:
    object.__setattr__(obj, "name", name)
    object.__setattr__(obj, "retry", Retry())
    object.__setattr__(obj, "timeout", None)
    object.__setattr__(obj, "inline", inline)


@dataclass(frozen=True, init=False)
class Loop(Step):
    """Run `body` again and again until `until` (a function whose parameters are keys) returns True, at most
    `max_iterations` times. Exhaustion fails naming the loop, unless `on_exhausted="continue"`.

    Expanded by default: one op per step per iteration (`refine__i2__draft`), a gate op per iteration, and a
    join that forwards the exiting iteration's keys. `inline=True` runs the whole loop in one op.
    """

    body: tuple[Step, ...] = field(default=())
    until: Callable[..., bool] = field(default=bool)
    max_iterations: int = 1
    on_exhausted: Literal["fail", "continue"] = "fail"

    kind = "loop"

    def __init__(
        self,
        name: str,
        /,
        *,
        body: StepsLike,
        until: Callable[..., bool],
        max_iterations: int,
        on_exhausted: Literal["fail", "continue"] = "fail",
        inline: bool = False,
    ) -> None:
        _base(self, name, inline)
        object.__setattr__(self, "body", as_steps(body))
        object.__setattr__(self, "until", until)
        object.__setattr__(self, "max_iterations", max_iterations)
        object.__setattr__(self, "on_exhausted", on_exhausted)


@dataclass(frozen=True, init=False)
class Branch(Step):
    """Run the steps of the case whose value equals key `on` (or the value a function of keys returns);
    `default` when no case matches. No match and no default fails naming the value and the known cases.

    Expanded by default: a router op with one optional output per case (untaken cases show as skipped) and a
    join op that forwards the keys the cases write. `inline=True` runs it in one op.
    """

    on: str | Callable[..., Hashable] = ""
    cases: Mapping[Hashable, tuple[Step, ...]] = field(default_factory=dict)
    default: tuple[Step, ...] | None = None

    kind = "branch"

    def __init__(
        self,
        name: str,
        /,
        *,
        on: str | Callable[..., Hashable],
        cases: Mapping[Hashable, StepsLike],
        default: StepsLike | None = None,
        inline: bool = False,
    ) -> None:
        _base(self, name, inline)
        object.__setattr__(self, "on", on)
        object.__setattr__(self, "cases", {value: as_steps(steps) for value, steps in cases.items()})
        object.__setattr__(self, "default", as_steps(default) if default is not None else None)

    def arms(self) -> list[tuple[str, tuple[Step, ...]]]:
        """Every case (then the default) as (label, steps); labels are `repr(value)` and `default`."""
        arms = [(repr(value), steps) for value, steps in self.cases.items()]
        if self.default is not None:
            arms.append(("default", self.default))
        return arms


@dataclass(frozen=True, init=False)
class Parallel(Step):
    """Run named branches at the same time; each sees the keys as they were before the Parallel, and no two
    branches may write the same key (V-PAR1).

    By default (`inline=True`) one op awaits every branch together (LLM waits overlap). `inline=False` gives
    each branch its own ops. With `on_branch_failure="ignore"` a failing branch's keys are left unwritten and the others
    go on; a `FlujoDagsterError` (pricing, budget, rejection) is never ignored.
    """

    branches: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)
    on_branch_failure: Literal["fail", "ignore"] = "fail"
    inline: bool = True

    kind = "parallel"

    def __init__(
        self,
        name: str,
        /,
        *,
        branches: Mapping[str, StepsLike],
        on_branch_failure: Literal["fail", "ignore"] = "fail",
        inline: bool = True,
    ) -> None:
        _base(self, name, inline)
        object.__setattr__(self, "branches", {label: as_steps(steps) for label, steps in branches.items()})
        object.__setattr__(self, "on_branch_failure", on_branch_failure)


@dataclass(frozen=True, init=False)
class Map(Step):
    """Run `body` once per element of the list key `over`, at most `max_concurrency` at a time, and collect
    each run's `result` key into the list key `into`, in input order.

    Inside the body, key `item` holds the element; `item`, `result` and any other key the body writes are
    scoped to that element and keep their outside values after the Map. By default (`inline=True`) one op
    awaits the elements together; `inline=False` gives each element its own ops (a Dagster fan-out).
    """

    over: str = ""
    item: str = ""
    body: tuple[Step, ...] = field(default=())
    result: str = ""
    into: str = ""
    max_concurrency: int | None = None
    inline: bool = True

    kind = "map"

    def __init__(
        self,
        name: str,
        /,
        *,
        over: str,
        item: str,
        body: StepsLike,
        result: str,
        into: str,
        max_concurrency: int | None = None,
        inline: bool = True,
    ) -> None:
        _base(self, name, inline)
        object.__setattr__(self, "over", over)
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "body", as_steps(body))
        object.__setattr__(self, "result", result)
        object.__setattr__(self, "into", into)
        object.__setattr__(self, "max_concurrency", max_concurrency)


@dataclass(frozen=True, init=False)
class Group(Step):
    """A named sequence of steps. Expanded, its steps are ops named `<group>__<step>`; with `inline=True` the
    whole group runs in one op (the way to keep long chains of cheap steps fast)."""

    steps: tuple[Step, ...] = field(default=())

    kind = "group"

    def __init__(self, name: str, /, *, steps: StepsLike, inline: bool = False) -> None:
        _base(self, name, inline)
        object.__setattr__(self, "steps", as_steps(steps))


def runs_in_one_op(step: Step, *, in_fanout: bool = False) -> bool:
    """Whether the compiler runs `step` (and everything under it) in one op.

    `inline=True` does (the default of Parallel and Map). Inside the body of a Map expanded with `inline=False`
    (`in_fanout`), every control-flow node does: Dagster maps each body op once per element but cannot route,
    unroll or fan out again inside that mapping.
    """
    return step.inline or (in_fanout and isinstance(step, Loop | Branch | Parallel | Map))
