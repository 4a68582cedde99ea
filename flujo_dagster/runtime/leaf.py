"""The leaf-step executor: runs one function or agent step (its timeout, its prompt, its output validated to
the types of the keys it writes) with its retries. Expanded ops and the interpreter both run leaves here, so a
leaf tries as often, fails with the same error and writes the same values whether it is its own op or runs
inside an inline op."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import anyio

from flujo_dagster.dsl.keys import prompt_keys, resolve_keys
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step
from flujo_dagster.errors import ControlFlowError
from flujo_dagster.runtime.agents import AgentCall
from flujo_dagster.runtime.calls import call_function_step, with_timeout
from flujo_dagster.runtime.injection import Injector, build_deps, injected_values
from flujo_dagster.runtime.prompts import render_prompt
from flujo_dagster.runtime.records import Meter, Reporter, StepRecord
from flujo_dagster.runtime.retries import NEVER_RETRIED, is_retried, retry_delay
from flujo_dagster.runtime.values import step_outputs

__all__ = ["AgentRunner", "LeafExecutor", "LeafResult"]


class AgentRunner(Protocol):
    """Runs one agent step (the adapter's `PricedAgents` is one)."""

    async def run(
        self, step: AgentStep, prompt: str, *, path: str, meter: Meter | None = None, deps: object = None
    ) -> tuple[AgentCall, str]: ...


@dataclass(frozen=True, kw_only=True)
class LeafResult:
    """What a leaf wrote (key -> typed value), its record, and its agent call (agent steps only)."""

    values: dict[str, object]
    record: StepRecord
    call: AgentCall | None = None


@dataclass(frozen=True)
class _Done:
    values: dict[str, object]
    call: AgentCall | None = None
    source: str | None = None


class LeafExecutor:
    """Runs leaf steps against the context's field types, with agents from `agents` (none: agent steps
    fail), resources and the execution context from `injector`, reporting finished steps and failed attempts
    to `reporter`."""

    def __init__(
        self,
        *,
        fields: Mapping[str, object],
        agents: AgentRunner | None = None,
        reporter: Reporter | None = None,
        injector: Injector | None = None,
    ) -> None:
        self.fields = fields
        self.agents = agents
        self.reporter = reporter
        self.injector = injector

    async def run(self, step: Step, values: Mapping[str, object], path: str) -> LeafResult:
        """Run `step` on `values` (holding at least the keys it reads) with the retry policy of
        `flujo_dagster.runtime.retries`; the last attempt's error is raised unchanged. Its record carries what
        its agent calls were charged over every attempt, a failed step's too."""
        meter = Meter()
        attempt = self._attempt(step, values, path, meter)
        attempts = max(step.retry.max_retries, 0) + 1
        start = time.perf_counter()
        for number in range(1, attempts + 1):
            try:
                done = await attempt()
            except NEVER_RETRIED as exc:
                self._failed(step, path, start, number, exc, meter)
                raise
            except Exception as exc:
                if number == attempts or not is_retried(exc):
                    self._failed(step, path, start, number, exc, meter)
                    raise
                delay = retry_delay(step.retry, number)
                if self.reporter is not None:
                    self.reporter.attempt_failed(path, number, attempts, exc, delay)
                await anyio.sleep(delay)
                continue
            record = _ok(step, path, time.perf_counter() - start, number, done, meter)
            if self.reporter is not None:
                self.reporter.step_finished(record)
            return LeafResult(values=done.values, record=record, call=done.call)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def _attempt(
        self, step: Step, values: Mapping[str, object], path: str, meter: Meter
    ) -> Callable[[], Awaitable[_Done]]:
        keys = resolve_keys(step, self.fields)
        writes = keys.writes or ()
        reads = {k: values[k] for k in keys.reads}
        if isinstance(step, FunctionStep):

            async def function() -> _Done:
                arguments = {**reads, **injected_values(step, self.injector, path)}
                result = await call_function_step(step, arguments, path=path)
                return _Done(step_outputs(path, writes, keys.split, result, self.fields))

            return function
        if not isinstance(step, AgentStep):
            raise ControlFlowError(f"{path}: {type(step).__name__} is not a leaf step")
        agents = self.agents
        if agents is None:
            raise ControlFlowError(f"agent step {path} needs an agent runtime, and none was given")

        async def agent() -> _Done:
            prompt = render_prompt(step, {k: reads[k] for k in prompt_keys(step)})

            async def run() -> tuple[AgentCall, str]:  # the deps are built within the attempt's timeout
                deps = await build_deps(step, reads, self.injector, path)
                return await agents.run(step, prompt, path=path, meter=meter, deps=deps)

            call, source = await with_timeout(step.timeout, run, path=path)
            return _Done(step_outputs(path, writes, False, call.output, self.fields), call, source)

        return agent

    def _failed(self, step: Step, path: str, start: float, attempts: int, error: Exception, meter: Meter) -> None:
        if self.reporter is not None:
            failed = StepRecord(
                path=path,
                kind=step.kind,
                status="failed",
                duration_s=time.perf_counter() - start,
                attempts=attempts,
                error=f"{type(error).__name__}: {error}",
            )
            self.reporter.step_finished(meter.record(failed))


def _ok(step: Step, path: str, duration_s: float, attempts: int, done: _Done, meter: Meter) -> StepRecord:
    call = done.call
    record = StepRecord(path=path, kind=step.kind, status="ok", duration_s=duration_s, attempts=attempts)
    if call is None:
        return record
    if meter.charges:  # the charges of every attempt, as the ledger recorded them (a budgeted call's per request)
        return meter.record(replace(record, model=call.model, model_source=done.source), done.source)
    return replace(  # an agent runner that reports no charges: the call as it was priced
        record,
        model=call.model,
        model_source=done.source,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read_tokens,
        requests=call.requests,
        cost_usd=call.cost_usd,
        price_source=call.price_source,
        usage_unknown=call.unmeasured_requests > 0,
    )
