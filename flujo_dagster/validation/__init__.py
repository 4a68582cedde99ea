"""Definition-time validation of pipelines: rule functions over the DSL tree, findings, report.

`validate` is the one pass `build_definitions`, `run_pipeline`, quarantine and `flujo-dagster validate` share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.interfaces import PipelineNaming, PricingRuntime
from flujo_dagster.pricing.prices import Price, PriceBook
from flujo_dagster.validation.checks import rule_checks
from flujo_dagster.validation.findings import Finding, Severity, ValidationReport
from flujo_dagster.validation.naming import DEFAULT_NAMING, rule_asset_names, rule_location
from flujo_dagster.validation.pricing import model_of, price_book, rule_prices
from flujo_dagster.validation.rules import RESERVED_STEP_NAMES, RULES
from flujo_dagster.validation.upstream import rule_upstream_assets

__all__ = ["RESERVED_STEP_NAMES", "Finding", "Severity", "ValidationReport", "validate"]


def validate(
    pipelines: Pipeline | Iterable[Pipeline],
    /,
    *,
    prices: Mapping[str, Price] | PriceBook | None = None,
    runtime: PricingRuntime | None = None,
    strict_pricing: bool = True,
    pyproject: Path | None = None,
    translator: PipelineNaming | None = None,
) -> ValidationReport:
    """Run every rule `build_definitions` and `run_pipeline` apply over one pipeline, or the pipelines of one code
    location (whose job, graph and schedule names must not collide), and return the report; never raises for
    findings.

    The options mean what they mean to `build_definitions`, with the same defaults: `prices` are price overrides
    (or a whole `PriceBook`, used as it is) over those of `pyproject` (default: the nearest pyproject.toml from the
    working directory up); `runtime` is the `AgentRuntime` whose models and declared prices the agent steps run
    with (default: each step's own model); `translator` names jobs and assets (default: `FlujoDagsterTranslator`'s
    names). `ConfigurationError` only when the pyproject's pricing table cannot be read.
    """
    listed = [pipelines] if isinstance(pipelines, Pipeline) else list(pipelines)
    book = price_book(prices, runtime, strict=strict_pricing, pyproject=pyproject)
    model_for = model_of(runtime)
    naming = translator or DEFAULT_NAMING
    findings: list[Finding] = []
    for pipeline in listed:
        findings += [f for rule in RULES for f in rule(pipeline)]
        findings += rule_asset_names(pipeline, naming)
        findings += rule_checks(pipeline, naming)
        findings += rule_upstream_assets(pipeline, naming)
        findings += rule_prices(pipeline, book, model_for)
    findings += rule_location(listed, naming)
    return ValidationReport.of(findings)
