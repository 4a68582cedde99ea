"""The in-process interpreter: runs any DSL subtree in one process, async, with the semantics of the expanded
ops (retries, timeouts, loops, branches, parallel branches awaited together). It knows nothing of Dagster:
it reports each inner step through the `Reporter` protocol."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

import anyio

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel
from flujo_dagster.dsl.flow import callable_reads, flow_of_steps
from flujo_dagster.dsl.keys import resolve_keys
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step
from flujo_dagster.errors import ConfigurationError, ControlFlowError, FlujoDagsterError, ParallelBranchError
from flujo_dagster.names import child_path, item_path, iteration_path, step_path
from flujo_dagster.runtime.agents import AgentCall
from flujo_dagster.runtime.calls import call_function_step, with_timeout
from flujo_dagster.runtime.prompts import render_prompt
from flujo_dagster.runtime.values import step_outputs

__all__ = ["AgentRunner", "Interpreter", "Reporter", "StepRecord", "branch_arm", "loop_should_exit"]

State = MutableMapping[str, object]


class AgentRunner(Protocol):
    """Runs one agent step (the adapter's `AgentRuntime` is one)."""

    async def run(self, step: AgentStep, prompt: str, *, path: str) -> tuple[AgentCall, str]: ...


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """What one inner step did: for the per-step table in the op's metadata."""

    path: str
    kind: str
    status: str  # "ok", "failed", "ignored"
    duration_s: float
    attempts: int = 1
    model: str | None = None
    model_source: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0
    cost_usd: Decimal | None = None
    price_source: str | None = None
    error: str | None = None


class Reporter(Protocol):
    """Receives a record for every inner step as it finishes."""

    def step_finished(self, record: StepRecord) -> None: ...


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


class Interpreter:
    """Runs steps against a state (key -> value), writing typed values back into it."""

    def __init__(
        self,
        *,
        fields: Mapping[str, object],
        agents: AgentRunner | None,
        reporter: Reporter | None = None,
    ) -> None:
        self.fields = fields
        self.agents = agents
        self.reporter = reporter
        self._rules: dict[type[Step], Callable[[Step, State, str], Awaitable[None]]] = {
            FunctionStep: self._function,
            AgentStep: self._agent,
            Loop: self._loop,
            Branch: self._branch,
            Parallel: self._parallel,
            Map: self._map,
            Group: self._group,
            Approval: self._approval,
        }

    async def run(self, steps: Sequence[Step], state: State, path: str) -> None:
        """Run `steps` in order under `path` (the parent's path), updating `state`."""
        for step in steps:
            rule = self._rules.get(type(step))
            if rule is None:
                raise ControlFlowError(f"{path}: the interpreter has no rule for {type(step).__name__}")
            await rule(step, state, step_path(path, step.kind, step.name))

    def _report(self, record: StepRecord) -> None:
        if self.reporter is not None:
            self.reporter.step_finished(record)

    async def _leaf(self, step: Step, state: State, path: str, call: Callable[[], Awaitable[StepRecord]]) -> None:
        """Run a leaf with its retries; records failures and re-raises the last one."""
        attempts = step.retry.max_retries + 1
        start = time.perf_counter()
        for attempt in range(1, attempts + 1):
            try:
                record = await call()
            except FlujoDagsterError:
                raise
            except Exception as exc:
                if attempt == attempts:
                    self._report(
                        StepRecord(
                            path=path,
                            kind=step.kind,
                            status="failed",
                            duration_s=time.perf_counter() - start,
                            attempts=attempt,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    )
                    raise
                await anyio.sleep(_delay(step, attempt))
                continue
            self._report(replace(record, duration_s=time.perf_counter() - start, attempts=attempt))
            return

    async def _approval(self, step: Step, state: State, path: str) -> None:
        raise ConfigurationError(
            f"approval gate {path} cannot run inside one op (it could not pause and resume there); validation "
            "refuses this placement (HITL-NESTED-001)"
        )

    async def _function(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, FunctionStep)
        keys = resolve_keys(step, self.fields)
        assert keys.writes is not None

        async def call() -> StepRecord:
            result = await call_function_step(step, {k: state[k] for k in keys.reads}, path=path)
            state.update(step_outputs(path, keys.writes or (), keys.split, result, self.fields))
            return StepRecord(path=path, kind=step.kind, status="ok", duration_s=0.0)

        await self._leaf(step, state, path, call)

    async def _agent(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, AgentStep)
        if self.agents is None:
            raise ControlFlowError(f"agent step {path} needs an agent runtime, and none was given")
        agents = self.agents
        keys = resolve_keys(step, self.fields)

        async def call() -> StepRecord:
            prompt = render_prompt(step, {k: state[k] for k in keys.reads})
            result, source = await with_timeout(step.timeout_s, lambda: agents.run(step, prompt, path=path), path=path)
            state.update(step_outputs(path, keys.writes or (), False, result.output, self.fields))
            return StepRecord(
                path=path,
                kind=step.kind,
                status="ok",
                duration_s=0.0,
                model=result.model,
                model_source=source,
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                cache_read_tokens=result.cache_read_tokens,
                requests=result.requests,
                cost_usd=result.cost_usd,
                price_source=result.price_source,
            )

        await self._leaf(step, state, path, call)

    async def _loop(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Loop)
        for iteration in range(1, max(step.max_iterations, 1) + 1):
            await self.run(step.body, state, iteration_path(path, iteration))
            if loop_should_exit(step, state, iteration, path):
                return

    async def _branch(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Branch)
        _, steps = branch_arm(step, state, path)
        await self.run(steps, state, path)

    async def _parallel(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Parallel)
        results: dict[str, dict[str, object]] = {}
        errors: dict[str, Exception] = {}
        control: list[FlujoDagsterError] = []

        async def one(label: str, steps: tuple[Step, ...]) -> None:
            local = dict(state)
            try:
                await self.run(steps, local, child_path(path, label))
            except FlujoDagsterError as exc:  # never ignored: raised once every branch has finished
                control.append(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a branch's own error: decided on after the others finish
                errors[label] = exc
                return
            written = flow_of_steps(steps, self.fields).may
            results[label] = {k: local[k] for k in written if k in local}

        async with anyio.create_task_group() as group:
            for label, steps in step.branches.items():
                group.start_soon(one, label, steps)
        for label in step.branches:  # merge in declaration order: deterministic
            state.update(results.get(label, {}))
        if control:
            raise control[0]
        if errors and step.on_branch_failure == "fail":
            summary = "; ".join(f"{label!r}: {type(e).__name__}: {e}" for label, e in errors.items())
            first = next(iter(errors.values()))
            raise ParallelBranchError(f"parallel {path}: branch(es) failed: {summary}") from first
        for label, exc in errors.items():
            self._report(
                StepRecord(
                    path=child_path(path, label),
                    kind="branch",
                    status="ignored",
                    duration_s=0.0,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )

    async def _group(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Group)
        await self.run(step.steps, state, path)

    async def _map(self, step: Step, state: State, path: str) -> None:
        assert isinstance(step, Map)
        items = list(state[step.over])  # type: ignore[call-overload]
        limiter = anyio.CapacityLimiter(step.max_concurrency or max(len(items), 1))
        results: list[object] = [None] * len(items)
        errors: dict[int, Exception] = {}
        control: list[FlujoDagsterError] = []

        async def one(index: int, item: object) -> None:
            async with limiter:
                local = dict(state)
                local[step.item] = item
                try:
                    await self.run(step.body, local, item_path(path, index))
                except FlujoDagsterError as exc:  # never ignored: raised once every item has finished
                    control.append(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - an item's own error: raised after the others finish
                    errors[index] = exc
                    return
                results[index] = local[step.result]

        async with anyio.create_task_group() as group:
            for index, item in enumerate(items):
                group.start_soon(one, index, item)
        if control:
            raise control[0]
        if errors:
            summary = "; ".join(f"[{i}]: {type(e).__name__}: {e}" for i, e in sorted(errors.items()))
            raise ParallelBranchError(f"map {path}: item(s) failed: {summary}") from errors[min(errors)]
        state.update(step_outputs(path, (step.into,), False, results, self.fields))


def _delay(step: Step, attempt: int) -> float:
    base = step.retry.delay_s
    if step.retry.backoff == "exponential":
        return float(base * 2 ** (attempt - 1))
    if step.retry.backoff == "linear":
        return base * attempt
    return base
