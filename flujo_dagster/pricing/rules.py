"""Pricing and budget rules checked when the definitions load: PRICE-001 (an agent step's model has no price),
PRICE-002 (pricing is not strict), BUDGET-001 (a budgeted agent step without `max_tokens`) and BUDGET-002 (a
budget that one request's worst case alone would exceed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.pricing.prices import ModelPricing, PriceBook, TokenUsage, unpriced_message
from flujo_dagster.validation.findings import Finding, ValidationReport

__all__ = ["ModelOf", "check_prices"]

ModelOf = Callable[[AgentStep], str | None]
"""The `provider:model` an agent step will run on (overrides applied), or None when it has no model."""


def _rule(pipeline: Pipeline, book: PriceBook, model_of: ModelOf) -> Iterator[Finding]:
    if not book.strict:
        yield Finding(
            code="PRICE-002",
            severity="warning",
            path=pipeline.name,
            message="pricing is not strict: genai-prices' loose matches are accepted, so a misspelt model is billed "
            "at a neighbouring model's price.",
            hint="leave strict pricing on and add overrides for the models genai-prices does not know exactly",
        )
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, AgentStep):
            continue
        model = model_of(step)  # None: no model at all, which V-A1 reports
        pricing = None if model is None else book.resolve(model)
        if model is not None and pricing is None:
            yield Finding(
                code="PRICE-001",
                severity="error",
                path=path,
                message=unpriced_message(model, path, book.why_unpriced(model)) + ".",
                hint="offline models (FunctionModel, TestModel) declare theirs with AgentRuntime(prices={...})",
            )
        budgets = [b for b in (pipeline.budget, step.budget) if b is not None]
        if budgets:
            yield from _budget_findings(path, step, budgets, pricing)


def _budget_findings(
    path: str, step: AgentStep, budgets: list[Budget], pricing: ModelPricing | None
) -> Iterator[Finding]:
    max_tokens = step.max_tokens()
    if max_tokens is None:
        yield Finding(
            code="BUDGET-001",
            severity="error",
            path=path,
            message="a budget applies to this agent step, but it sets no max_tokens, so no request has a worst case "
            "to reserve.",
            hint="pass model_settings={'max_tokens': N} to agent_step (or set it on the agent)",
        )
        return
    for budget in budgets:
        worst = None if pricing is None else pricing.cost(TokenUsage(output_tokens=max_tokens))
        if budget.max_tokens is not None and max_tokens > budget.max_tokens:
            reason = f"max_tokens={max_tokens} alone is more than the budget's max_tokens={budget.max_tokens}"
        elif budget.max_cost_usd is not None and worst is not None and worst > budget.max_cost_usd:
            reason = (
                f"max_tokens={max_tokens} output tokens alone cost ${worst} on {pricing.model if pricing else ''}, "
                f"more than the budget's max_cost_usd=${budget.max_cost_usd}"
            )
        else:
            continue
        yield Finding(
            code="BUDGET-002",
            severity="error",
            path=path,
            message=f"no request of this step can ever fit the {budget.scope} budget: {reason}.",
            hint="raise the budget or lower max_tokens",
        )


def check_prices(pipelines: list[Pipeline], book: PriceBook, model_of: ModelOf) -> ValidationReport:
    """PRICE-001 for every agent step whose model has no price in `book`; PRICE-002 once per pipeline when
    `book` is not strict."""
    return ValidationReport.of(f for p in pipelines for f in _rule(p, book, model_of))
