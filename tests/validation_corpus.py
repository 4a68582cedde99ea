"""A corpus of pipelines that break each validation rule (one case per rule code and severity), beside one healthy
pipeline. tests/test_validation_parity.py runs every case through `validate`, `build_definitions` and the CLI, and
quarantines each next to the healthy pipeline; it also checks that the cases cover every rule code the package
emits and docs/validation.md lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, create_model
from pydantic_ai import Agent

from flujo_dagster import (
    Approval,
    Budget,
    Check,
    DailyPartitions,
    Loop,
    Parallel,
    Pipeline,
    PriceBook,
    Schedule,
    StaticPartitions,
    agent_step,
    step,
)

__all__ = ["CASES", "Case", "healthy"]


class Doc(BaseModel):
    """`topic` is the run input; every other key has a default."""

    topic: str
    draft: str = ""
    score: int = 0
    left: int = 0
    day: str = ""


@step
def draft(topic: str) -> str:
    return f"about {topic}"


@step
def score(draft: str) -> int:
    return len(draft)


def ok(value: object) -> bool:
    return bool(value)


def _changed_budget() -> Budget:
    """A budget whose limit was changed after it was made (no constructor accepts a negative one)."""
    budget = Budget(max_tokens=100)
    object.__setattr__(budget, "max_tokens", -1)
    return budget


def _doc(name: str, *steps: Any, **options: Any) -> Pipeline:
    return Pipeline(name, context=Doc, steps=list(steps) or [draft], **options)


@dataclass(frozen=True)
class Case:
    """Pipelines of one code location that break a rule, the resources they are built with, and the findings
    expected, as (code, severity) pairs."""

    pipelines: tuple[Pipeline, ...]
    expected: tuple[tuple[str, str], ...]
    resources: dict[str, object] = field(default_factory=dict)


healthy = _doc("healthy", draft, score, assets=["draft"], checks=[Check("draft", fn=ok)])

writer = Agent("openai:gpt-5-mini", defer_model_check=True)
unpriced = Agent("ollama:llama3", defer_model_check=True)


@step(name="score")
def score_text(draft: str) -> str:
    return draft


@step
def helper(topic: str) -> None:
    return None


@step(name="input", output_keys=["draft"])
def reserved(topic: str) -> str:
    return topic


class Loose(BaseModel):
    topic: str
    extras: dict[str, Any] = {}


class Outline(BaseModel):
    """`outline` has no default, so reading it before a step writes it is V-CTX1."""

    topic: str
    outline: str


@step
def outline(topic: str) -> str:
    return topic


@step(name="review", output_keys=["topic"])
def review(outline: str) -> str:
    return outline


Odd = create_model("Odd", topic=(str, ...), café=(str, ""))  # a field name Dagster refuses in asset check names


@step(output_keys=["café"])
def cafe(topic: str) -> str:
    return topic


@step
def extras(topic: str) -> dict[str, Any]:
    return {"topic": topic}


class Edit(BaseModel):
    draft: str
    score: int


class Shop(BaseModel):
    """`rows` is read from an upstream asset in the UPSTREAM cases."""

    topic: str
    rows: list[int]
    draft: str = ""


@step(name="rows")
def write_rows(topic: str) -> list[int]:
    return [len(topic)]


Unloadable = create_model("Unloadable", topic=(str, ...), draft=(str, ""), fn=(Callable, ...))  # no JSON Schema


def _steps(count: int) -> list[Any]:
    return [step(name=f"s{i}", input_keys=["topic"], output_keys=["draft"])(draft.fn) for i in range(count)]


def _never(draft: str) -> bool:
    return False


INPUTS = {"topic": "agents"}
CASES: dict[str, Case] = {
    "V-CTX1": Case((Pipeline("ctx1", context=Outline, steps=[review, outline]),), (("V-CTX1", "error"),)),
    "V-CTX2": Case((_doc("ctx2", draft, assets=["drafts"]),), (("V-CTX2", "error"),)),
    "V-CTX3": Case((_doc("ctx3", helper),), (("V-CTX3", "error"),)),
    "V-TYPE error": Case((_doc("types", draft, score_text),), (("V-TYPE", "error"),)),
    "V-TYPE warning": Case((Pipeline("loose", context=Loose, steps=[extras]),), (("V-TYPE", "warning"),)),
    "V-NAME": Case((_doc("names", reserved, draft),), (("V-NAME", "error"),)),
    "V-NAME key": Case((Pipeline("odd", context=Odd, steps=[cafe], assets=["café"]),), (("V-NAME", "error"),)),
    "V-A1": Case(
        (_doc("a1", agent_step("draft", agent=Agent(defer_model_check=True), prompt="{topic}")),), (("V-A1", "error"),)
    ),
    "V-INJ": Case((_doc("inj", step(name="draft", resources={"dbb": "warehouse"})(draft.fn)),), (("V-INJ", "error"),)),
    "V-PAR1": Case(
        (
            _doc(
                "par1",
                draft,
                Parallel("fan", branches={"a": [score], "b": [step(name="rescore", output_keys=["score"])(score.fn)]}),
            ),
        ),
        (("V-PAR1", "error"),),
    ),
    "V-SCALE warning": Case(
        (_doc("wide", Loop("again", body=_steps(2), until=_never, max_iterations=90)),), (("V-SCALE", "warning"),)
    ),
    "V-SCALE error": Case((_doc("huge", *_steps(1300)),), (("V-SCALE", "error"),)),
    "V-FLOW": Case(
        (_doc("flow", Loop("again", body=[draft], until=_never, max_iterations=0)),), (("V-FLOW", "error"),)
    ),
    "V-JOB": Case((_doc("twice"), _doc("twice", draft, score)), (("V-JOB", "error"),)),
    "V-JOB graph": Case((_doc("shelf", assets=["draft"]), _doc("shelf_graph")), (("V-JOB", "error"),)),
    "HITL-NESTED-001": Case(
        (_doc("nested", draft, Parallel("fan", branches={"a": [Approval("gate", show=["draft"])], "b": [score]})),),
        (("HITL-NESTED-001", "error"),),
    ),
    "HITL-DECISION-001": Case(
        (_doc("decision", draft, Approval("gate", show=["draft"], decision=Edit)),), (("HITL-DECISION-001", "error"),)
    ),
    "HITL-POLICY-001": Case(
        (_doc("policy", draft, Approval("gate", show=["draft"], quorum=0)),), (("HITL-POLICY-001", "error"),)
    ),
    "SCHED-001": Case((_doc("sched1", schedule=Schedule(cron="0 6 * * *")),), (("SCHED-001", "error"),)),
    "SCHED-002": Case(
        (_doc("sched2", schedule=Schedule(cron="0 6 * * *", inputs={**INPUTS, "topik": "x"})),),
        (("SCHED-002", "error"),),
    ),
    "SCHED-003 error": Case(
        (_doc("sched3", schedule=Schedule(cron="0 6 30 2 *", inputs=INPUTS)),), (("SCHED-003", "error"),)
    ),
    "SCHED-003 warning": Case(
        (_doc("sched3w", schedule=Schedule(cron="*/90 * * * *", inputs=INPUTS)),), (("SCHED-003", "warning"),)
    ),
    "SCHED-004": Case(
        (_doc("sched4", schedule=Schedule(cron="0 6 * * *", timezone="Mars/Base", inputs=INPUTS)),),
        (("SCHED-004", "error"),),
    ),
    "SCHED-005": Case(
        (_doc("sched5", schedule=Schedule(cron="0 6 * * *", inputs=INPUTS, name="every morning")),),
        (("SCHED-005", "error"),),
    ),
    "PART-001": Case(
        (_doc("part1", partitions=StaticPartitions(keys=["en"], input_key="lang")),), (("PART-001", "error"),)
    ),
    "PART-002": Case(
        (_doc("part2", partitions=DailyPartitions(start="2026-01-01", timezone="Mars/Base", input_key="day")),),
        (("PART-002", "error"),),
    ),
    "PART-003": Case(
        (_doc("part3", partitions=StaticPartitions(keys=["en", "e...s"], input_key="day")),), (("PART-003", "error"),)
    ),
    "PART-004": Case(
        (_doc("part4", partitions=StaticPartitions(keys=["en", "../x"], input_key="day")),), (("PART-004", "error"),)
    ),
    "PRICE-001": Case(
        (_doc("price1", agent_step("draft", agent=unpriced, prompt="{topic}")),), (("PRICE-001", "error"),)
    ),
    "PRICE-002": Case(
        (_doc("price2", agent_step("draft", agent=writer, prompt="{topic}")),),
        (("PRICE-002", "warning"),),
        {"price_book": PriceBook(strict=False)},
    ),
    "BUDGET-001": Case(
        (_doc("budget1", agent_step("draft", agent=writer, prompt="{topic}"), budget=Budget(max_cost_usd=Decimal(1))),),
        (("BUDGET-001", "error"),),
    ),
    "BUDGET-002": Case(
        (
            _doc(
                "budget2",
                agent_step("draft", agent=writer, prompt="{topic}", model_settings={"max_tokens": 500}),
                budget=Budget(max_tokens=100),
            ),
        ),
        (("BUDGET-002", "error"),),
    ),
    "BUDGET-003": Case(
        (_doc("budget3", draft, budget=Budget(max_cost_usd=Decimal(1), scope="day", timezone="Mars/Base")),),
        (("BUDGET-003", "error"),),
    ),
    "BUDGET-004": Case(
        (
            _doc(
                "budget4",
                agent_step("draft", agent=writer, prompt="{topic}", model_settings={"max_tokens": -5}),
                budget=Budget(max_cost_usd=Decimal(1)),
            ),
        ),
        (("BUDGET-004", "error"),),
    ),
    "BUDGET-005": Case(
        (
            _doc(
                "budget5",
                agent_step("draft", agent=writer, prompt="{topic}", model_settings={"max_tokens": 5}),
                budget=_changed_budget(),
            ),
        ),
        (("BUDGET-005", "error"),),
    ),
    "CHECK-001": Case((_doc("check1", draft, checks=[Check("draft", fn=ok)]),), (("CHECK-001", "error"),)),
    "CHECK-002": Case(
        (_doc("check2", draft, assets=["draft"], checks=[Check("draft", fn=ok), Check("draft", fn=ok)]),),
        (("CHECK-002", "error"),),
    ),
    "CHECK-003": Case(
        (_doc("check3", draft, assets=["draft"], checks=[Check("draft", fn=ok, name="not empty")]),),
        (("CHECK-003", "error"),),
    ),
    "UPSTREAM-001": Case(
        (_doc("up1", draft, assets=["draft"], upstream={"nope": "shop/rows"}),), (("UPSTREAM-001", "error"),)
    ),
    "UPSTREAM-002": Case(
        (Pipeline("up2", context=Shop, steps=[write_rows, draft], assets=["draft"], upstream={"rows": "shop/rows"}),),
        (("UPSTREAM-002", "error"),),
    ),
    "UPSTREAM-003": Case(
        (_doc("up3", draft, assets=["draft"], upstream={"score": "shop/score"}),), (("UPSTREAM-003", "error"),)
    ),
    "UPSTREAM-004": Case(
        (Pipeline("up4", context=Unloadable, steps=[draft], assets=["draft"], upstream={"fn": "shop/fn"}),),
        (("UPSTREAM-004", "error"),),
    ),
    "UPSTREAM-005": Case((_doc("up5", draft, deps=["shop/rows"]),), (("UPSTREAM-005", "error"),)),
    "UPSTREAM-006": Case((_doc("up6", draft, assets=["draft"], deps=["up6/draft"]),), (("UPSTREAM-006", "error"),)),
}
