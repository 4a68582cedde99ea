"""Rules for a pipeline's `checks=`: CHECK-001 (a check on a key that is not an asset), CHECK-002 (two checks
reported under one name, or the reserved name), CHECK-003 (a check name Dagster refuses)."""

from __future__ import annotations

from collections.abc import Iterator

from flujo_dagster.dsl.checks import Check
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.interfaces import PipelineNaming
from flujo_dagster.names import CONTEXT_CHECK, TYPE_CHECK, step_path
from flujo_dagster.validation.findings import Finding
from flujo_dagster.validation.names import check_identifier, is_dagster_name, is_identifier_name

__all__ = ["rule_checks"]


def _finding(pipeline: Pipeline, code: str, check: Check, message: str, hint: str) -> Finding:
    return Finding(
        code=code,
        severity="error",
        pipeline=pipeline.name,
        path=step_path(pipeline.name, "check", check.name),
        message=message,
        hint=hint,
    )


def _names(pipeline: Pipeline, checks: list[Check], naming: PipelineNaming) -> Iterator[Finding]:
    """CHECK-002 and CHECK-003 for the checks on asset keys."""
    outputs: dict[str, Check] = {}
    for check in checks:
        asset_key = list(naming.get_asset_spec(pipeline, check.key).key.path)
        output = check_identifier(asset_key, check.name)
        if check.name in (TYPE_CHECK, CONTEXT_CHECK):
            own = "type check" if check.name == TYPE_CHECK else "final-context check"
            message = f"check {check.name!r} on key {check.key!r} has the name of flujo's own {own}."
            yield _finding(pipeline, "CHECK-002", check, message, "rename the check (Check(..., name=...))")
        elif not is_identifier_name(check.name.replace(".", "_")):
            message = (
                f"check {check.name!r} on key {check.key!r} cannot be named so: Dagster names the check's output "
                f"{output!r}, and Dagster names use only ASCII letters, digits and underscores."
            )
            hint = "name the check with letters, digits and underscores (Check(..., name=...))"
            yield _finding(pipeline, "CHECK-003", check, message, hint)
        elif output in outputs:
            other = outputs[output]
            same = other.name == check.name and other.key == check.key
            message = (
                f"two checks on key {check.key!r} are named {check.name!r}."
                if same
                else f"check {check.name!r} on key {check.key!r} and check {other.name!r} on key {other.key!r} "
                f"would both be reported as {output!r}."
            )
            yield _finding(pipeline, "CHECK-002", check, message, "give each check of a key its own name")
        else:
            outputs[output] = check


def rule_checks(pipeline: Pipeline, naming: PipelineNaming) -> Iterator[Finding]:
    """CHECK-001, CHECK-002 and CHECK-003 for every check of `pipeline` (asset key names: see V-NAME)."""
    on_assets = []
    for check in pipeline.checks:
        if check.key in pipeline.assets:
            on_assets.append(check)
            continue
        listed = f"assets={list(pipeline.assets)}" if pipeline.assets else "assets= (the pipeline has no assets)"
        message = f"check {check.name!r} is on key {check.key!r}, which is not in {listed}, so it would never run."
        hint = f"add {check.key!r} to assets=[...], or check a key that is an asset"
        yield _finding(pipeline, "CHECK-001", check, message, hint)
    if is_dagster_name(pipeline.name):  # else V-NAME refuses the pipeline's name, which every check output holds
        yield from _names(pipeline, on_assets, naming)
