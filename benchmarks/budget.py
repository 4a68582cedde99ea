"""Budgets that cannot be overspent, and that spend what they allow. Two cases, each against plain pydantic-ai:

- 16 parallel agent steps sharing a $0.20 budget, each request's worst case $0.02 (max_tokens=2,000 on gpt-4o's
  genai-prices price, $10 per million output tokens), the answers' usage varied (some near max_tokens);
- 32 parallel agent steps sharing a $0.01 budget on gpt-4o-mini ($0.15 / $0.60 per million input / output tokens),
  each request's worst case about $0.00072 (max_tokens=1,000: $0.0006, plus the serialized request's ~800 bytes
  counted as input tokens: $0.00012; the table prints the exact figure reserved), the answers' usage varied from 160
  to 1,000 output tokens (40 input tokens each): the 32 answers together cost $0.012, more than the budget, so the
  budget binds. A request is refused only when it could not fit even with nothing in flight, i.e. when less than
  one worst case remains; until then it waits for requests in flight to settle.

Against

- flujo_dagster: one inline Parallel op, the run budget reserved per request in the instance's SQLite ledger;
- plain pydantic-ai: the agents run together, sharing one `RunUsage` and `UsageLimits(cost_limit=budget)`, which
  compares the cost already spent before each request.

Both use the same scripted model (a FunctionModel answering as openai:gpt-4o or gpt-4o-mini after 50 ms, so both
price it with genai-prices). Overspend = max(0, actual spend - budget), in US dollars; utilization = spend / budget.
The 32-branch case is also run with `max_wait=0` (refused at once, as before admission). Then the ledger's
latencies (benchmarks/ledger_latency.py): T50 one reserve+reconcile on SQLite, uncontended; T95 the 95th percentile
with 16 processes contending. Prints a table, then one JSON line:
{"bench": "budget", "branches": 16, "overspend_usd": X, "baseline_overspend_usd": Y, "reserve_p50_ms": T50,
 "reserve_p95_contended_ms": T95, "utilization": U, "baseline_overspend_usd_32": Y32}
where X is flujo_dagster's largest overspend over both cases (target 0), Y the 16-branch baseline's, U flujo_dagster's
utilization in the 32-branch case (target >= 0.8) and Y32 the 32-branch baseline's overspend.

    .venv/bin/python benchmarks/budget.py
"""

import asyncio
import json
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from dagster import DagsterInstance
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from ledger_latency import contended, percentile, uncontended
from pydantic import BaseModel, create_model
from pydantic_ai import Agent
from pydantic_ai.exceptions import UsageLimitExceeded
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage, RunUsage, UsageLimits

from flujo_dagster import AgentRuntime, Budget, Parallel, Pipeline, Price, agent_step, run_pipeline
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.dsl.budget import DEFAULT_MAX_WAIT
from flujo_dagster.pricing import USD_NANOS

INPUT_TOKENS = 40
GPT_4O = Price(input_per_mtok="2.5", output_per_mtok="10")
GPT_4O_MINI = Price(input_per_mtok="0.15", output_per_mtok="0.6")
"""The scripted model's declared prices: the list prices in genai-prices (a reservation is priced for the
configured model, the spend for the model that answered)."""


@dataclass(frozen=True)
class Case:
    """`branches` parallel requests to `model` under `budget` US dollars, answering `outputs[i]` output tokens
    (<= `max_tokens`)."""

    branches: int
    budget: Decimal
    max_tokens: int
    outputs: list[int]
    model: str
    price: Price


WIDE = Case(16, Decimal("0.20"), 2_000, [2_000 - 7 * i * i for i in range(16)], "gpt-4o", GPT_4O)
MANY = Case(32, Decimal("0.01"), 1_000, [1_000 - 12 * ((i * 37) % 71) for i in range(32)], "gpt-4o-mini", GPT_4O_MINI)


def scripted(case: Case, calls: list[int]) -> FunctionModel:
    """Answers `branch i` as openai:<case.model> with case.outputs[i] output tokens after 50 ms; records i."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = next(p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
        branch = int(str(prompt).split()[-1])
        calls.append(branch)
        await anyio.sleep(0.05)
        usage = RequestUsage(input_tokens=INPUT_TOKENS, output_tokens=case.outputs[branch])
        return ModelResponse(parts=[TextPart(f"answer {branch}")], usage=usage, provider_name="openai")

    return FunctionModel(answer, model_name=case.model)


def cost(case: Case, output_tokens: int) -> Decimal:
    usage = GenaiUsage(input_tokens=INPUT_TOKENS, output_tokens=output_tokens)
    return calc_price(usage, case.model, provider_id="openai").total_price


@dataclass(frozen=True)
class Outcome:
    spent: Decimal
    requests: int
    worst: Decimal  # the largest worst case reserved for one request (flujo only)


def flujo(case: Case, *, max_wait: timedelta = DEFAULT_MAX_WAIT) -> Outcome:
    """Run the case's budgeted branches in one inline Parallel op (`max_wait=0`: refused at once when a request
    does not fit, as before admission)."""
    fields: dict[str, Any] = {f"a{i}": (str, "") for i in range(case.branches)}
    context: type[BaseModel] = create_model("Fan", **fields)
    agent = Agent(f"openai:{case.model}", defer_model_check=True)
    settings = {"max_tokens": case.max_tokens}
    branches = {
        f"b{i}": [agent_step(f"ask{i}", agent=agent, prompt=f"branch {i}", output_key=f"a{i}", model_settings=settings)]
        for i in range(case.branches)
    }
    budget = Budget(max_cost_usd=case.budget, max_wait=max_wait)
    pipeline = Pipeline("fan", context=context, steps=[Parallel("all", branches=branches)], budget=budget)
    runtime = AgentRuntime(model=scripted(case, []), prices={f"function:{case.model}": case.price})
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(home) as instance:
            result = run_pipeline(
                pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL"
            )
            entries = InstanceLedger().for_instance(instance).entries(run_id=result.run_id)
    spent = Decimal(sum(e.actual.usd_nanos for e in entries if e.actual is not None)) / USD_NANOS
    worst = Decimal(max((e.reserved.usd_nanos for e in entries), default=0)) / USD_NANOS
    return Outcome(spent, len(entries), worst)


async def baseline(case: Case) -> Outcome:
    """The case's plain pydantic-ai runs together, sharing one usage counter and cost_limit. Every request the
    model answered is spent, including those whose run then raised `UsageLimitExceeded`."""
    shared = RunUsage()
    limits = UsageLimits(cost_limit=case.budget)
    calls: list[int] = []
    agent = Agent(scripted(case, calls), model_settings={"max_tokens": case.max_tokens})

    def one(i: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await agent.run(f"branch {i}", usage=shared, usage_limits=limits)
            except UsageLimitExceeded:
                return

        return run

    await asyncio.gather(*(one(i)() for i in range(case.branches)))
    return Outcome(sum((cost(case, case.outputs[i]) for i in calls), Decimal(0)), len(calls), Decimal(0))


def over(case: Case, outcome: Outcome) -> Decimal:
    return max(Decimal(0), outcome.spent - case.budget)


def main() -> None:
    results = {case.branches: (flujo(case), asyncio.run(baseline(case))) for case in (WIDE, MANY)}
    refusing = flujo(MANY, max_wait=timedelta(0))
    with tempfile.TemporaryDirectory() as tmp:
        t50 = statistics.median(uncontended(Path(tmp) / "alone.sqlite", 2_000))
        t95 = percentile(contended(Path(tmp) / "shared.sqlite", 16, 200), 95)
    print(f"{'case':<34} {'variant':<44} {'requests run':>12} {'spent/budget':>12} {'overspend_usd':>14}")
    for case in (WIDE, MANY):
        ours, theirs = results[case.branches]
        label = f"{case.branches} branches, budget ${case.budget}"
        rows = [("flujo_dagster ledger (admission)", ours), ("pydantic-ai shared cost_limit", theirs)]
        if case is MANY:
            rows.insert(1, ("flujo_dagster, max_wait=0 (refused at once)", refusing))
        for name, outcome in rows:
            share = outcome.spent / case.budget
            print(f"{label:<34} {name:<44} {outcome.requests:>12} {share:>12.3f} {over(case, outcome):>14}")
        print(f"{label}: worst case per request ${ours.worst} (max_tokens={case.max_tokens}), actual below it")
    print(f"ledger: reserve+reconcile p50 {t50:.3f} ms uncontended, p95 {t95:.3f} ms with 16 processes")
    (wide, wide_base), (many, many_base) = results[WIDE.branches], results[MANY.branches]
    print(
        json.dumps(
            {
                "bench": "budget",
                "branches": WIDE.branches,
                "overspend_usd": float(max(over(WIDE, wide), over(MANY, many))),
                "baseline_overspend_usd": float(over(WIDE, wide_base)),
                "reserve_p50_ms": round(t50, 3),
                "reserve_p95_contended_ms": round(t95, 3),
                "utilization": round(float(many.spent / MANY.budget), 3),
                "baseline_overspend_usd_32": float(over(MANY, many_base)),
            }
        )
    )


if __name__ == "__main__":
    main()
