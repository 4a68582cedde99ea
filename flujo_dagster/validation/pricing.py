"""Pricing and budget rules: PRICE-001 (an agent step's model has no price), PRICE-002 (pricing is not strict),
BUDGET-001 (a budgeted agent step without `max_tokens`), BUDGET-002 (a budget that one request's worst case
alone would exceed), BUDGET-003 (a budget's timezone is not an IANA name), BUDGET-004 (a budgeted step's
`max_tokens` is not a usable limit) and BUDGET-005 (a budget holding values its constructor refuses); and the price
book they are checked against."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from flujo_dagster.config import find_pyproject, pyproject_prices
from flujo_dagster.dsl.budget import Budget, budget_problem
from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.interfaces import PricingRuntime
from flujo_dagster.pricing.prices import ModelPricing, Price, PriceBook, TokenUsage, unpriced_message
from flujo_dagster.validation.findings import Finding
from flujo_dagster.validation.names import is_timezone

__all__ = ["ModelOf", "price_book", "rule_prices"]

ModelOf = Callable[[AgentStep], str | None]
"""The `provider:model` an agent step will run on (overrides applied), or None when it has no model."""


def price_book(
    prices: Mapping[str, Price] | PriceBook | None,
    runtime: PricingRuntime | None,
    *,
    strict: bool,
    pyproject: Path | None,
) -> PriceBook:
    """The book `build_definitions` prices with: `prices` itself when it is a `PriceBook`; else the overrides of
    `pyproject` (default: the nearest pyproject.toml from the working directory up) and `prices` (which win),
    with the prices `runtime` declares for its models."""
    if isinstance(prices, PriceBook):
        return prices
    overrides = {**pyproject_prices(pyproject or find_pyproject()), **(prices or {})}
    if runtime is None:  # what a default AgentRuntime() declares: nothing
        return PriceBook(overrides=overrides, strict=strict)
    return runtime.price_book(overrides, strict=strict)


def model_of(runtime: PricingRuntime | None) -> ModelOf:
    """How `runtime` picks each agent step's model; without one, the step's own (as a default AgentRuntime does)."""
    if runtime is None:
        return AgentStep.model_id
    return runtime.model_id_for


def rule_prices(pipeline: Pipeline, book: PriceBook, model_for: ModelOf) -> Iterator[Finding]:
    """PRICE-002 once when `book` is not strict; PRICE-001 for every agent step whose model has no price in
    `book`; BUDGET-001/002 for every agent step a budget applies to."""
    if not book.strict:
        yield Finding(
            code="PRICE-002",
            severity="warning",
            pipeline=pipeline.name,
            path=pipeline.name,
            message="pricing is not strict: genai-prices' loose matches are accepted, so a misspelt model is billed "
            "at a neighbouring model's price.",
            hint="leave strict pricing on and add overrides for the models genai-prices does not know exactly",
        )
    if pipeline.budget is not None:
        yield from _budget_zone(pipeline, pipeline.name, pipeline.budget)
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, AgentStep):
            continue
        if step.budget is not None:
            yield from _budget_zone(pipeline, path, step.budget)
        model = model_for(step)  # None: no model at all, which V-A1 reports
        pricing = None if model is None else book.resolve(model)
        if model is not None and pricing is None:
            yield Finding(
                code="PRICE-001",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=unpriced_message(model, path, book.why_unpriced(model)) + ".",
                hint="add an override for the model (offline models, FunctionModel and TestModel, cost $0 without one)",
            )
        budgets = [b for b in (pipeline.budget, step.budget) if b is not None and budget_problem(b) is None]
        if budgets:
            yield from _budget_findings(pipeline, path, step, budgets, pricing)


def _budget_findings(
    pipeline: Pipeline, path: str, step: AgentStep, budgets: list[Budget], pricing: ModelPricing | None
) -> Iterator[Finding]:
    max_tokens = step.max_tokens()
    setting = step.max_tokens_setting()
    if max_tokens is None and setting is not None:
        yield Finding(
            code="BUDGET-004",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"a budget applies to this agent step, but its max_tokens is {type(setting).__name__} "
            f"{setting!r}, not a whole number of tokens from 1 to 2**62 - 1, so no request has a worst case to "
            "reserve.",
            hint="pass model_settings={'max_tokens': N} with N a positive int",
        )
        return
    if max_tokens is None:
        yield Finding(
            code="BUDGET-001",
            severity="error",
            pipeline=pipeline.name,
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
            pipeline=pipeline.name,
            path=path,
            message=f"no request of this step can ever fit the {budget.scope} budget: {reason}.",
            hint="raise the budget or lower max_tokens",
        )


def _budget_zone(pipeline: Pipeline, path: str, budget: Budget) -> Iterator[Finding]:
    """BUDGET-005 when the budget holds values its constructor refuses (it was changed after it was made);
    else BUDGET-003 when its timezone (the zone its per-day scope counts days in) is not an IANA name."""
    problem = budget_problem(budget)
    if problem is not None:
        yield Finding(
            code="BUDGET-005",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"the budget cannot be enforced: {problem}.",
            hint="build the Budget with valid values; do not change it after it is made",
        )
    elif not is_timezone(budget.timezone):
        yield Finding(
            code="BUDGET-003",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"the budget's timezone {budget.timezone!r} is not an IANA timezone name.",
            hint="use an IANA timezone name such as 'UTC' or 'Europe/Madrid'",
        )
