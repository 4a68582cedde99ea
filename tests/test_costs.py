"""Costs that always add up: what `flujo-dagster costs`, the step metadata and `PipelineRun.agent_calls` report
for a run equals what the budget ledger recorded for it, also when a step fails after its calls were charged,
when a response reports no usage, and when the model that answered has no price."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from dagster import DagsterEventType, DagsterInstance
from pydantic import BaseModel, create_model
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Budget, Map, Parallel, Pipeline, Price, Retry, agent_step, run_pipeline
from flujo_dagster.adapter.control.costs import AgentCallSummary, run_costs
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.cli import main
from flujo_dagster.names import USAGE_UNKNOWN
from flujo_dagster.pricing import USD_NANOS

MAX_TOKENS = 1_000
PRICE = Price(input_per_mtok=0, output_per_mtok=1_000)
"""$0.001 per output token, input free: a request's worst case is exactly MAX_TOKENS x $0.001 = $1."""
WORST = Decimal(MAX_TOKENS) / 1_000
SETTINGS = {"max_tokens": MAX_TOKENS}
AGENT = Agent("openai:gpt-5-mini", defer_model_check=True)


def prompt_of(messages: list[ModelMessage]) -> str:
    return next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))


def model(calls: list[str], *, usage: RequestUsage | None = None, provider: str | None = None) -> FunctionModel:
    """Answers each prompt after a short wait (so that concurrent calls all reserve first), with `usage` (by
    default 40 input and 100 + 7 x n output tokens for prompt `... n`), as `provider` when given."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = prompt_of(messages)
        calls.append(prompt)
        await anyio.sleep(0.05)
        used = usage or RequestUsage(input_tokens=40, output_tokens=100 + 7 * int(prompt.split()[-1]))
        return ModelResponse(parts=[TextPart(f"answer to {prompt}")], usage=used, provider_name=provider)

    return FunctionModel(answer, model_name="metered")


def context_of(name: str, **fields: object) -> type[BaseModel]:
    return create_model(name, **fields)  # type: ignore[call-overload,no-any-return]


def ledger_spent(instance: DagsterInstance, run_id: str) -> Decimal:
    """What the run's budget scope spent, read through the ledger's public API."""
    totals = InstanceLedger().for_instance(instance).totals(f"run:{run_id}")
    assert totals.reserved_usd_nanos == 0
    return Decimal(totals.spent_usd_nanos) / USD_NANOS


def cli_costs(home: Path, run_id: str) -> tuple[list[str], str]:
    """`flujo-dagster costs RUN_ID`: its lines, and what it wrote to stderr."""
    result = CliRunner().invoke(main, ["costs", run_id], env={"DAGSTER_HOME": str(home)})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines(), result.stderr


def total(calls: tuple[AgentCallSummary, ...] | list[AgentCallSummary]) -> Decimal:
    return sum((c.cost_usd for c in calls), Decimal(0))


def test_a_response_without_usage_is_charged_at_its_reservation(instance: DagsterInstance, dagster_home: Path) -> None:
    """Ten agent steps in a row under a budget that fits three worst cases; the model reports no usage. Before,
    each was reconciled to $0 and all ten ran; now each counts at its reservation, so three run."""
    calls: list[str] = []
    asks = [
        agent_step(f"ask{i}", agent=AGENT, prompt=f"question {i}", output_key=f"a{i}", model_settings=SETTINGS)
        for i in range(10)
    ]
    context = context_of("Unmeasured", **{f"a{i}": (str, "") for i in range(10)})
    budget = Budget(max_cost_usd=WORST * Decimal("3.5"))
    pipeline = Pipeline("unmeasured", context=context, steps=asks, budget=budget)
    runtime = AgentRuntime(
        model=model(calls, usage=RequestUsage(unmeasured_requests=1)), prices={"function:metered": PRICE}
    )
    result = run_pipeline(pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL")
    assert not result.success and result.error is not None and "UsageLimitExceededError" in result.error
    assert len(calls) == 3  # the fourth request did not fit
    spent = ledger_spent(instance, result.run_id)
    assert spent == 3 * WORST  # each worst case: max_tokens output tokens (input is free)
    assert [c.step_path for c in result.agent_calls] == [f"unmeasured > agent:ask{i}" for i in range(3)]
    assert all(c.usage_unknown and c.price_source == "reservation (usage unknown)" for c in result.agent_calls)
    assert total(result.agent_calls) == spent
    outputs = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_OUTPUT)
    marked = [e for e in outputs if USAGE_UNKNOWN in e.dagster_event.step_output_data.metadata]  # type: ignore[union-attr]
    assert len(marked) == 3
    warnings = [
        e.user_message for e in instance.all_logs(result.run_id) if "without reporting its usage" in e.user_message
    ]
    assert len(warnings) == 3 and "unmeasured > agent:ask0: model function:metered answered" in warnings[0]
    lines, err = cli_costs(dagster_home, result.run_id)
    assert [line.endswith("reservation (usage unknown)  [usage unknown]") for line in lines[1:-1]] == [True] * 3
    assert lines[-1].startswith(f"total: ${spent:.6f}, ")
    assert "3 step(s) got answers without usage" in err


def fanout(kind: str) -> Pipeline:
    """Ten agent calls awaited together in one inline op: a Parallel of ten branches, or a Map over ten items."""
    if kind == "parallel":
        context = context_of("FanCosts", **{f"a{i}": (str, "") for i in range(10)})
        branches = {
            f"b{i}": [
                agent_step(f"ask{i}", agent=AGENT, prompt=f"branch {i}", output_key=f"a{i}", model_settings=SETTINGS)
            ]
            for i in range(10)
        }
        steps: list[object] = [Parallel("all", branches=branches)]
    else:
        context = context_of(
            "MapCosts", items=(list[int], list(range(10))), item=(int, 0), answer=(str, ""), answers=(list[str], [])
        )
        ask = agent_step("ask", agent=AGENT, prompt="item {item}", output_key="answer", model_settings=SETTINGS)
        steps = [Map("each", over="items", item="item", body=[ask], result="answer", into="answers")]
    # seven worst cases at once; refused at once (max_wait 0) rather than waiting for earlier calls to settle
    budget = Budget(max_cost_usd=WORST * Decimal("7.5"), max_wait=timedelta(0))
    return Pipeline(f"{kind}_costs", context=context, steps=steps, budget=budget)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["parallel", "map"])
def test_the_calls_of_a_failed_inline_op_add_up_to_the_ledger(
    instance: DagsterInstance, dagster_home: Path, kind: str
) -> None:
    """The budget refuses three of ten calls awaited together in one op, which fails: the seven calls it paid
    for are in `agent_calls` (with the run's id), in the failure's metadata and in `flujo-dagster costs`, and
    they add up to what the ledger recorded for the run."""
    calls: list[str] = []
    runtime = AgentRuntime(model=model(calls), prices={"function:metered": PRICE})
    result = run_pipeline(
        fanout(kind), {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL"
    )
    assert not result.success and result.error is not None and "UsageLimitExceededError" in result.error
    assert len(calls) == 7
    spent = ledger_spent(instance, result.run_id)
    expected = sum(Decimal(100 + 7 * int(c.split()[-1])) / 1_000 for c in calls)
    assert spent == expected > 0
    assert len(result.agent_calls) == 7 and {c.run_id for c in result.agent_calls} == {result.run_id}
    assert total(result.agent_calls) == spent
    assert total(run_costs(result.run_id, instance=instance)) == spent
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    data = failure.dagster_event.step_failure_data  # type: ignore[union-attr]
    assert data is not None and data.user_failure_data is not None
    assert "UsageLimitExceededError" in (data.user_failure_data.description or "")
    assert data.error is not None and data.error.cause is not None
    assert data.error.cause.cls_name == "UsageLimitExceededError"  # the original error, chained
    lines, _ = cli_costs(dagster_home, result.run_id)
    assert len(lines) == 1 + 7 + 1
    assert lines[-1].startswith(f"total: ${spent:.6f}, ") and lines[-1].endswith(" 7 agent step(s)")


def test_an_unpriced_answering_model_shows_its_reservation(instance: DagsterInstance, dagster_home: Path) -> None:
    """The configured model is priced, the one that answers is not: the step fails, its worst case stays
    spent, and the call is reported at that cost with a price source saying why."""
    calls: list[str] = []
    ask = agent_step("ask", agent=AGENT, prompt="question 1", output_key="a0", model_settings=SETTINGS)
    context = context_of("Unpriced", a0=(str, ""))
    pipeline = Pipeline("unpriced", context=context, steps=[ask], budget=Budget(max_cost_usd=Decimal(5)))
    runtime = AgentRuntime(model=model(calls, provider="elsewhere"), prices={"function:metered": PRICE})
    result = run_pipeline(pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL")
    assert not result.success and result.error is not None and "PricingNotConfiguredError" in result.error
    spent = ledger_spent(instance, result.run_id)
    assert spent == WORST
    (call,) = result.agent_calls
    assert (call.model, call.cost_usd, call.status) == ("elsewhere:metered", spent, "failed")
    assert call.price_source == "reservation (no price for elsewhere:metered)"
    lines, _ = cli_costs(dagster_home, result.run_id)
    assert lines[1].endswith("reservation (no price for elsewhere:metered)  [step failed]")
    assert lines[-1].startswith(f"total: ${spent:.6f}, ")


def test_without_a_budget_unknown_usage_and_unpriced_answers_are_flagged(instance: DagsterInstance) -> None:
    """No budget, so no reservation: an answer without usage is reported as measured (a lower bound) and
    flagged; a call whose answering model has no price is still listed, with its step's failure."""
    ask0 = agent_step("ask0", agent=AGENT, prompt="question 0", output_key="a0")
    ask1 = agent_step("ask1", agent=AGENT, prompt="question 1", output_key="a1")
    context = context_of("Unbudgeted", a0=(str, ""), a1=(str, ""))
    pipeline = Pipeline("unbudgeted", context=context, steps=[ask0, ask1])
    calls: list[str] = []
    runtime = AgentRuntime(
        step_models={
            "ask0": model(calls, usage=RequestUsage(unmeasured_requests=1)),
            "ask1": model(calls, provider="elsewhere"),
        },
        prices={"function:metered": PRICE},
    )
    result = run_pipeline(pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL")
    assert not result.success and result.error is not None and "PricingNotConfiguredError" in result.error
    unknown, unpriced = result.agent_calls
    assert (unknown.usage_unknown, unknown.status, unknown.cost_usd) == (True, "ok", Decimal(0))
    assert unknown.price_source == "offline; usage unknown, a lower bound"
    assert (unpriced.model, unpriced.status, unpriced.cost_usd) == ("elsewhere:metered", "failed", Decimal(0))
    assert unpriced.price_source == "no price for elsewhere:metered" and unpriced.output_tokens == 107


def test_every_attempt_of_a_timed_out_step_counts_and_its_error_stays_its_own(instance: DagsterInstance) -> None:
    """Two attempts, each cut off by the step's timeout: both worst cases stay spent and are reported on the
    step's failure, which still names the timeout (class and message) as the step's error."""

    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await anyio.sleep(5)
        return ModelResponse(parts=[TextPart("late")])

    ask = agent_step(
        "ask",
        agent=AGENT,
        prompt="question 1",
        output_key="a0",
        model_settings=SETTINGS,
        timeout=timedelta(seconds=0.2),
        retry=Retry(max_retries=1, delay=timedelta(0)),
    )
    context = context_of("Late", a0=(str, ""))
    pipeline = Pipeline("late", context=context, steps=[ask], budget=Budget(max_cost_usd=Decimal(5)))
    runtime = AgentRuntime(model=FunctionModel(slow, model_name="metered"), prices={"function:metered": PRICE})
    result = run_pipeline(pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL")
    assert not result.success and result.error is not None
    assert result.error.startswith("step ask: flujo_dagster.errors.StepTimeoutError: step late > agent:ask did not")
    spent = ledger_spent(instance, result.run_id)
    assert spent == 2 * WORST
    (call,) = result.agent_calls
    assert (call.requests, call.cost_usd, call.status) == (2, spent, "failed")
    assert call.price_source == "reservation (request cut off)"
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    data = failure.dagster_event.step_failure_data  # type: ignore[union-attr]
    assert data is not None and data.user_failure_data is not None and data.error is not None
    assert (data.user_failure_data.description or "").startswith("StepTimeoutError")
    assert data.error.cause is not None and data.error.cause.cls_name == "StepTimeoutError"
