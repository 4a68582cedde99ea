"""Sixteen budgeted agent steps, one op each (`inline=False`), under the multiprocess executor: a
reconstructable target for `execute_job` (each step process imports this module and rebuilds the jobs).

The scripted model answers `branch i` with `OUTPUTS[i]` output tokens at $0.001 each: a request's worst case
is exactly $2, and the budget is $20."""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from decimal import Decimal

import anyio
from dagster import DagsterInstance, JobDefinition, multiprocess_executor
from pydantic import BaseModel, create_model
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Budget, Parallel, Pipeline, Price, Retry, agent_step, build_definitions
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.pricing import BudgetLedger, PostgresBudgetLedger

BRANCHES, MAX_TOKENS = 16, 2_000
BUDGET_USD = Decimal("20")
OUTPUTS = [MAX_TOKENS - 7 * i * i for i in range(BRANCHES)]
POSTGRES_URL = os.environ.get("FLUJO_TEST_POSTGRES_URL", "")


async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = next(p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    branch = int(str(prompt).split()[-1])
    await anyio.sleep(0.2)  # overlap with the other step processes
    usage = RequestUsage(input_tokens=40, output_tokens=OUTPUTS[branch])
    return ModelResponse(parts=[TextPart(f"answer {branch}")], usage=usage)


fields: dict[str, object] = {f"a{i}": (str, "") for i in range(BRANCHES)}
Fan: type[BaseModel] = create_model("Fan", **fields)  # type: ignore[call-overload]
agent = Agent("openai:gpt-5-mini", defer_model_check=True)
branches = {
    f"b{i}": [
        agent_step(
            f"ask{i}", agent=agent, prompt=f"branch {i}", output_key=f"a{i}", model_settings={"max_tokens": MAX_TOKENS}
        )
    ]
    for i in range(BRANCHES)
}
fan = Pipeline(
    "fan_op",
    context=Fan,
    steps=[Parallel("all", branches=branches, inline=False)],
    budget=Budget(max_cost_usd=BUDGET_USD),
)
runtime = AgentRuntime(
    model=FunctionModel(answer, model_name="metered"),
    prices={"function:metered": Price(input_per_mtok=0, output_per_mtok=1_000)},
)
executor = multiprocess_executor.configured(
    {"max_concurrent": BRANCHES, "start_method": {"forkserver": {"preload_modules": ["tests.budget_defs"]}}}
)
sqlite_defs = build_definitions(pipelines=[fan], resources={"agent_runtime": runtime}, executor=executor)


def sqlite_job() -> JobDefinition:
    """The fan-out charging the instance's SQLite ledger."""
    return sqlite_defs.resolve_job_def("fan_op")


@functools.cache
def _postgres_job() -> JobDefinition:
    ledger = PostgresBudgetLedger(POSTGRES_URL)
    defs = build_definitions(
        pipelines=[fan], resources={"agent_runtime": runtime, "budget_ledger": ledger}, executor=executor
    )
    return defs.resolve_job_def("fan_op")


def postgres_job() -> JobDefinition:
    """The fan-out charging the PostgreSQL ledger of FLUJO_TEST_POSTGRES_URL (built on first use in each
    process: the ledger connects when it is made)."""
    return _postgres_job()


# one budgeted agent step, in process: a reconstructable job whose runs the tests create with any tags and parents
DAY_ZONE = "Pacific/Kiritimati"  # UTC+14: its day differs from the UTC day for ten hours out of 24
DAY_CALLS: list[str] = []


def _counted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    DAY_CALLS.append("called")
    return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=10, output_tokens=100))


One: type[BaseModel] = create_model("One", a0=(str, ""))
# cache=False: every run must make its request, for the budget to count it
ask = agent_step("ask", agent=agent, prompt="hi", output_key="a0", model_settings={"max_tokens": 200}, cache=False)
capped = Pipeline(
    "capped", context=One, steps=[ask], budget=Budget(max_cost_usd=Decimal("1"), scope="day", timezone=DAY_ZONE)
)
day_runtime = AgentRuntime(
    model=FunctionModel(_counted, model_name="metered"),
    prices={"function:metered": Price(input_per_mtok=0, output_per_mtok=1_000)},
)
day_defs = build_definitions(pipelines=[capped], resources={"agent_runtime": day_runtime})


def day_job() -> JobDefinition:
    """`capped`: a $1 per-day budget (days in Pacific/Kiritimati); a request's worst case is $0.20."""
    return day_defs.resolve_job_def("capped")


run_capped = Pipeline("run_capped", context=One, steps=[ask], budget=Budget(max_cost_usd=Decimal("1")))
run_defs = build_definitions(pipelines=[run_capped], resources={"agent_runtime": day_runtime})


def run_job() -> JobDefinition:
    """`run_capped`: a $1 budget per re-execution chain; a request's worst case is $0.20."""
    return run_defs.resolve_job_def("run_capped")


# one budgeted agent step whose first two attempts fail, charging a ledger that counts how often it is looked up
FLAKY_CALLS: list[str] = []
LEDGER_LOOKUPS: list[str] = []


class CountedLedger(InstanceLedger):
    """The instance's ledger, counting its look-ups (each one checks the ledger, walks the chain, recovers)."""

    def for_instance(self, instance: DagsterInstance) -> BudgetLedger:
        LEDGER_LOOKUPS.append("looked up")
        return super().for_instance(instance)


def _flaky(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    FLAKY_CALLS.append("called")
    if len(FLAKY_CALLS) < 3:
        raise RuntimeError("flaky model")
    return ModelResponse(parts=[TextPart("ok")], usage=RequestUsage(input_tokens=10, output_tokens=100))


retried = agent_step(
    "ask",
    agent=agent,
    prompt="hi",
    output_key="a0",
    model_settings={"max_tokens": 200},
    retry=Retry(max_retries=2, delay=timedelta(0)),
)
flaky_runtime = AgentRuntime(
    model=FunctionModel(_flaky, model_name="metered"),
    prices={"function:metered": Price(input_per_mtok=0, output_per_mtok=1_000)},
)
flaky = Pipeline("flaky", context=One, steps=[retried], budget=Budget(max_cost_usd=Decimal("1")))
flaky_defs = build_definitions(
    pipelines=[flaky], resources={"agent_runtime": flaky_runtime, "budget_ledger": CountedLedger()}
)


def flaky_job() -> JobDefinition:
    """`flaky`: a $1 run budget; the agent step succeeds on its third attempt."""
    return flaky_defs.resolve_job_def("flaky")
