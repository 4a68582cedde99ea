"""The interpreter's concurrent nodes: a Parallel's branches and a Map's items, each run on its own copy of
the state and awaited together. A branch's or item's own error is decided on once all have finished (a nested
Parallel's or Map's `ParallelBranchError` is one: it only wraps steps' own errors); our other errors
(`FlujoDagsterError`: control flow, configuration, budgets) are never ignored. Each branch or item runs through
the `Checkpointer`: one that finished in an earlier run on the same inputs is reused, not run again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping, MutableMapping, Sequence
from typing import Generic, TypeVar

import anyio

from flujo_dagster.dsl.control import Map, Parallel
from flujo_dagster.dsl.flow import flow_of_steps
from flujo_dagster.dsl.steps import Step
from flujo_dagster.errors import FlujoDagsterError, ParallelBranchError
from flujo_dagster.names import child_path, item_path
from flujo_dagster.runtime.checkpoints import Checkpointer
from flujo_dagster.runtime.records import Reporter, StepRecord
from flujo_dagster.runtime.values import step_outputs

__all__ = ["RunSteps", "State", "run_map", "run_parallel"]

State = MutableMapping[str, object]
RunSteps = Callable[[Sequence[Step], State, str], Awaitable[None]]
"""Runs steps in order under a parent path, updating the state (the interpreter's `run`)."""
K = TypeVar("K", bound=Hashable)


class _Outcomes(Generic[K]):
    """The errors of concurrent runs: ours (never ignored) apart from each run's own, by its key."""

    def __init__(self) -> None:
        self.ours: list[FlujoDagsterError] = []
        self.own: dict[K, Exception] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[None]]) -> bool:
        """Await `work()`; False when it failed (its error is kept)."""
        try:
            await work()
        except ParallelBranchError as exc:  # steps' own errors, in a nested Parallel or Map
            self.own[key] = exc
            return False
        except FlujoDagsterError as exc:  # never ignored: raised once every run has finished
            self.ours.append(exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a branch's or item's own error: decided on after the others
            self.own[key] = exc
            return False
        return True

    def raise_ours(self) -> None:
        """Raise the first of our errors, if any."""
        if self.ours:
            raise self.ours[0]


def _summary(errors: Mapping[str, Exception]) -> str:
    return "; ".join(f"{label}: {type(e).__name__}: {e}" for label, e in errors.items())


async def run_parallel(
    node: Parallel,
    state: State,
    path: str,
    *,
    run: RunSteps,
    fields: Mapping[str, object],
    reporter: Reporter | None,
    checkpoints: Checkpointer,
) -> None:
    """Run every branch on a copy of `state`; merge what each wrote, in declaration order."""
    results: dict[str, dict[str, object]] = {}
    outcomes = _Outcomes[str]()
    inputs = checkpoints.inputs(state)

    async def one(label: str, steps: tuple[Step, ...]) -> None:
        local, branch = dict(state), child_path(path, label)
        flow = flow_of_steps(steps, fields)
        written = flow.may

        async def work() -> None:
            results[label] = await checkpoints.run(
                branch,
                inputs,
                written,
                lambda: run(steps, local, branch),
                lambda: {k: local[k] for k in written if k in local},
                flow.must,
            )

        await outcomes.run(label, work)

    async with anyio.create_task_group() as group:
        for label, steps in node.branches.items():
            group.start_soon(one, label, steps)
    for label in node.branches:  # merge in declaration order: deterministic
        state.update(results.get(label, {}))
    outcomes.raise_ours()
    if outcomes.own and node.on_branch_failure == "fail":
        first = next(iter(outcomes.own.values()))
        summary = _summary({repr(label): exc for label, exc in outcomes.own.items()})
        raise ParallelBranchError(f"parallel {path}: branch(es) failed: {summary}") from first
    for label, exc in outcomes.own.items():
        if reporter is not None:
            reporter.step_finished(
                StepRecord(
                    path=child_path(path, label),
                    kind="branch",
                    status="ignored",
                    duration_s=0.0,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )


async def run_map(
    node: Map, state: State, path: str, *, run: RunSteps, fields: Mapping[str, object], checkpoints: Checkpointer
) -> None:
    """Run the body once per element of `over` (at most `max_concurrency` at once), each on a copy of `state`
    with `item` bound; `into` gets each copy's `result`, in input order."""
    items = list(state[node.over])  # type: ignore[call-overload]
    limiter = anyio.CapacityLimiter(node.max_concurrency or max(len(items), 1))
    results: list[object] = [None] * len(items)
    outcomes = _Outcomes[int]()
    keys = (node.result,)
    inputs = checkpoints.inputs({k: v for k, v in state.items() if k != node.item})

    async def one(index: int, item: object) -> None:
        async with limiter:
            local, at = {**state, node.item: item}, item_path(path, index)

            async def work() -> None:
                values = await checkpoints.run(
                    at,
                    checkpoints.with_item(inputs, node.item, item),
                    keys,
                    lambda: run(node.body, local, at),
                    lambda: {node.result: local[node.result]},
                    keys,
                )
                results[index] = values[node.result]

            await outcomes.run(index, work)

    async with anyio.create_task_group() as group:
        for index, item in enumerate(items):
            group.start_soon(one, index, item)
    outcomes.raise_ours()
    if outcomes.own:
        summary = _summary({f"[{i}]": outcomes.own[i] for i in sorted(outcomes.own)})
        raise ParallelBranchError(f"map {path}: item(s) failed: {summary}") from outcomes.own[min(outcomes.own)]
    state.update(step_outputs(path, (node.into,), False, results, fields))
