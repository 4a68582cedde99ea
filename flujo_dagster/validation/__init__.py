"""Definition-time validation of pipelines: rule functions over the DSL tree, findings, report."""

from __future__ import annotations

from collections.abc import Iterable

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.validation.findings import Finding, Severity, ValidationReport
from flujo_dagster.validation.rules import RESERVED_STEP_NAMES, RULES

__all__ = ["RESERVED_STEP_NAMES", "Finding", "Severity", "ValidationReport", "validate"]


def validate(pipeline: Pipeline | Iterable[Pipeline]) -> ValidationReport:
    """Run every rule over one pipeline (or several) and return the report; never raises for findings."""
    pipelines = [pipeline] if isinstance(pipeline, Pipeline) else list(pipeline)
    return ValidationReport.of(f for p in pipelines for rule in RULES for f in rule(p))
