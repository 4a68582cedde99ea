"""Pricing rules checked when the definitions load: PRICE-001 (an agent step's model has no price) and
PRICE-002 (pricing is not strict)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.pricing.prices import PriceBook, unpriced_message
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
        if model is not None and book.resolve(model) is None:
            yield Finding(
                code="PRICE-001",
                severity="error",
                path=path,
                message=unpriced_message(model, path, book.why_unpriced(model)) + ".",
                hint="offline models (FunctionModel, TestModel) declare theirs with AgentRuntime(prices={...})",
            )


def check_prices(pipelines: list[Pipeline], book: PriceBook, model_of: ModelOf) -> ValidationReport:
    """PRICE-001 for every agent step whose model has no price in `book`; PRICE-002 once per pipeline when
    `book` is not strict."""
    return ValidationReport.of(f for p in pipelines for f in _rule(p, book, model_of))
