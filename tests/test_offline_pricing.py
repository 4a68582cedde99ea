"""Offline models (`TestModel`, `FunctionModel`, the string `test`) cost $0 with price source `offline` without a
declared price; a declared price still wins; a budget over an offline model charges $0 and still counts tokens."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Budget, Pipeline, Price, PriceBook, agent_step, build_definitions, run_pipeline
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.names import COST_USD, MODEL, PRICE_BOOK_KEY, PRICE_SOURCE
from flujo_dagster.pricing.prices import TokenUsage
from flujo_dagster.validation import validate

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "flujo-dagster"


class Question(BaseModel):
    topic: str = "agents"
    answer: str = ""


def ask(budget: Budget | None = None, *, twice: bool = False) -> Pipeline:
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    names = ["answer", "again"] if twice else ["answer"]
    steps = [
        agent_step(n, agent=agent, prompt="About {topic}", output_key="answer", model_settings={"max_tokens": 100})
        for n in names
    ]
    return Pipeline("ask", context=Question, steps=steps, budget=budget)


def answer_metadata(instance: DagsterInstance, run_id: str) -> dict[str, object]:
    (output,) = [e for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT) if e.step_key == "answer"]
    return {k: v.value for k, v in output.dagster_event.event_specific_data.metadata.items()}  # type: ignore[union-attr]


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("an answer")], usage=RequestUsage(input_tokens=30, output_tokens=20))


def test_a_test_model_without_a_price_loads_runs_and_costs_nothing(
    instance: DagsterInstance, dagster_home: Path
) -> None:
    runtime = AgentRuntime(model=TestModel())
    assert validate([ask()], runtime=runtime).ok  # no PRICE-001
    result = run_pipeline(ask(), instance=instance, resources={"agent_runtime": runtime})
    assert result.success, result.error
    metadata = answer_metadata(instance, result.run_id)
    assert (metadata[MODEL], metadata[PRICE_SOURCE], metadata[COST_USD]) == ("test:test", "offline", 0)
    (call,) = result.agent_calls
    assert (call.cost_usd, call.price_source) == (Decimal(0), "offline")
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "DAGSTER_HOME"}}
    costs = subprocess.run(
        [str(SCRIPT), "costs", result.run_id],
        cwd=ROOT,
        env={**env, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert costs.returncode == 0, costs.stderr
    (line,) = costs.stdout.splitlines()[1:-1]
    assert line.split()[-2:] == ["0.000000", "offline"] and "ask > agent:answer" in line and " test:test " in line
    assert costs.stdout.splitlines()[-1].startswith("total: $0.000000, ")


def test_every_offline_model_is_free_and_a_declared_price_wins() -> None:
    declared = Price(input_per_mtok="1", output_per_mtok="2")
    runtime = AgentRuntime(model=FunctionModel(scripted, model_name="scripted"), prices={"function:scripted": declared})
    defs = build_definitions(pipelines=[ask()], resources={"agent_runtime": runtime}, prices={"test:test": declared})
    book = defs.resources[PRICE_BOOK_KEY]
    assert isinstance(book, PriceBook)
    million = TokenUsage(input_tokens=10**6, output_tokens=10**6)
    priced = {m: book.require(m, where="ask > agent:answer") for m in ("function:scripted", "test:test", "function:x")}
    assert {m: (p.source, p.cost(million)) for m, p in priced.items()} == {
        "function:scripted": ("offline", Decimal(3)),  # declared on the runtime
        "test:test": ("override", Decimal(3)),  # declared to build_definitions
        "function:x": ("offline", Decimal(0)),  # declared nowhere
    }
    assert book.resolve("ollama:llama3") is None  # only offline providers are free


def test_a_budget_over_an_offline_model_charges_nothing_and_still_counts_tokens(instance: DagsterInstance) -> None:
    runtime = AgentRuntime(model=FunctionModel(scripted, model_name="scripted"))
    zero = ask(Budget(max_cost_usd=0))
    report = validate([zero], runtime=runtime)
    assert report.ok and not report.findings  # no BUDGET-002: a $0 worst case fits a $0 budget
    result = run_pipeline(zero, instance=instance, resources={"agent_runtime": runtime})
    assert result.success, result.error
    ledger = InstanceLedger().for_instance(instance)
    (entry,) = ledger.entries(run_id=result.run_id)
    assert entry.state == "reconciled" and entry.reserved.usd_nanos == 0
    assert entry.actual is not None and (entry.actual.usd_nanos, entry.actual.tokens) == (0, 50)
    # 50 tokens spent by the first step; the second's worst case (its prompt and max_tokens=100) does not fit
    few = run_pipeline(ask(Budget(max_tokens=120), twice=True), instance=instance, resources={"agent_runtime": runtime})
    assert not few.success and few.error is not None
    assert few.error.startswith("step again: flujo_dagster.errors.UsageLimitExceededError: "), few.error
