"""Budgets that cannot be overspent: 16 parallel agent steps sharing a $0.20 budget, each request's worst case
$0.02 (max_tokens=2,000 on gpt-4o's genai-prices price, $10 per million output tokens), the answers' usage varied
(some near max_tokens), against

- flujo_dagster: one Parallel op, the run budget reserved per request in the instance's SQLite ledger;
- plain pydantic-ai: 16 agents run together, sharing one `RunUsage` and `UsageLimits(cost_limit=0.20)`, which
  compares the cost already spent before each request.

Both use the same scripted model (a FunctionModel answering as openai:gpt-4o, so both price it with genai-prices).
Overspend = max(0, actual spend - budget), in US dollars. Then the ledger's latencies (benchmarks/ledger_latency.py):
T50 one reserve+reconcile on SQLite, uncontended; T95 the 95th percentile with 16 processes contending.
Prints a table, then one JSON line:
{"bench": "budget", "branches": 16, "overspend_usd": X, "baseline_overspend_usd": Y, "reserve_p50_ms": T50,
 "reserve_p95_contended_ms": T95}

    .venv/bin/python benchmarks/budget.py
"""

import asyncio
import json
import statistics
import tempfile
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
from flujo_dagster.pricing import USD_NANOS

BRANCHES, MAX_TOKENS = 16, 2_000
BUDGET_USD = Decimal("0.20")
OUTPUTS = [MAX_TOKENS - 7 * i * i for i in range(BRANCHES)]
INPUT_TOKENS = 40
GPT_4O = Price(input_per_mtok="2.5", output_per_mtok="10")
"""The scripted model's declared price: gpt-4o's list price in genai-prices (a reservation is priced for the
configured model, the spend for the model that answered)."""
CALLS: list[int] = []


async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers `branch i` as openai:gpt-4o with OUTPUTS[i] output tokens, after 50 ms."""
    prompt = next(p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    branch = int(str(prompt).split()[-1])
    CALLS.append(branch)
    await anyio.sleep(0.05)
    usage = RequestUsage(input_tokens=INPUT_TOKENS, output_tokens=OUTPUTS[branch])
    return ModelResponse(parts=[TextPart(f"answer {branch}")], usage=usage, provider_name="openai")


def model() -> FunctionModel:
    return FunctionModel(answer, model_name="gpt-4o")


def cost(output_tokens: int) -> Decimal:
    usage = GenaiUsage(input_tokens=INPUT_TOKENS, output_tokens=output_tokens)
    return calc_price(usage, "gpt-4o", provider_id="openai").total_price


def flujo_overspend() -> tuple[Decimal, int]:
    """Run the 16 budgeted branches in one Parallel op; (overspend, requests that ran)."""
    fields: dict[str, Any] = {f"a{i}": (str, "") for i in range(BRANCHES)}
    context: type[BaseModel] = create_model("Fan", **fields)
    agent = Agent("openai:gpt-4o", defer_model_check=True)
    settings = {"max_tokens": MAX_TOKENS}
    branches = {
        f"b{i}": [agent_step(f"ask{i}", agent=agent, prompt=f"branch {i}", output_key=f"a{i}", model_settings=settings)]
        for i in range(BRANCHES)
    }
    pipeline = Pipeline(
        "fan", context=context, steps=[Parallel("all", branches=branches)], budget=Budget(max_cost_usd=BUDGET_USD)
    )
    runtime = AgentRuntime(model=model(), prices={"function:gpt-4o": GPT_4O})
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(home) as instance:
            result = run_pipeline(
                pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL"
            )
            entries = InstanceLedger().for_instance(instance).entries(run_id=result.run_id)
    spent = Decimal(sum(e.actual.usd_nanos for e in entries if e.actual is not None)) / USD_NANOS
    return max(Decimal(0), spent - BUDGET_USD), len(entries)


async def baseline_overspend() -> tuple[Decimal, int]:
    """16 plain pydantic-ai runs together, sharing one usage counter and cost_limit; (overspend, requests).
    Every request the model answered is spent, including those whose run then raised `UsageLimitExceeded`."""
    shared = RunUsage()
    limits = UsageLimits(cost_limit=BUDGET_USD)
    agent = Agent(model(), model_settings={"max_tokens": MAX_TOKENS})
    CALLS.clear()

    async def one(i: int) -> None:
        try:
            await agent.run(f"branch {i}", usage=shared, usage_limits=limits)
        except UsageLimitExceeded:
            return

    await asyncio.gather(*(one(i) for i in range(BRANCHES)))
    spent = sum((cost(OUTPUTS[i]) for i in CALLS), Decimal(0))
    return max(Decimal(0), spent - BUDGET_USD), len(CALLS)


def main() -> None:
    overspend, ran = flujo_overspend()
    baseline, baseline_ran = asyncio.run(baseline_overspend())
    with tempfile.TemporaryDirectory() as tmp:
        t50 = statistics.median(uncontended(Path(tmp) / "alone.sqlite", 2_000))
        t95 = percentile(contended(Path(tmp) / "shared.sqlite", 16, 200), 95)
    print(f"{'variant':<44} {'requests run':>12} {'overspend_usd':>14}")
    print(f"{'flujo_dagster ledger (reserve, reconcile)':<44} {ran:>12} {overspend:>14}")
    print(f"{'pydantic-ai shared cost_limit':<44} {baseline_ran:>12} {baseline:>14}")
    print(f"budget ${BUDGET_USD}, worst case per request ${cost(MAX_TOKENS)}, {BRANCHES} branches")
    print(f"ledger: reserve+reconcile p50 {t50:.3f} ms uncontended, p95 {t95:.3f} ms with 16 processes")
    print(
        json.dumps(
            {
                "bench": "budget",
                "branches": BRANCHES,
                "overspend_usd": float(overspend),
                "baseline_overspend_usd": float(baseline),
                "reserve_p50_ms": round(t50, 3),
                "reserve_p95_contended_ms": round(t95, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
