"""Approval gates checked when the definitions load: HITL-NESTED-001 (a gate placed where a run could not pause
at it and resume without running completed work again) and HITL-DECISION-001 (a decision model that edits keys
the gate does not show)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Map, Parallel, runs_in_one_op
from flujo_dagster.dsl.flow import children, walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import Step
from flujo_dagster.validation.findings import Finding

__all__ = ["rule_approvals"]


def _refusal(ancestor: Step, where: str) -> tuple[str, str] | None:
    """Why a gate below `ancestor` (at `where`) cannot pause and resume, and what to do; None when it can."""
    if isinstance(ancestor, Parallel | Map) and not ancestor.inline:
        return (
            f"gates inside a {ancestor.kind} ({where}) are not supported yet",
            f"move the gate after {ancestor.kind}:{ancestor.name} and show the keys it writes",
        )
    if runs_in_one_op(ancestor):
        return (
            f"{where} runs in one op, so resuming would run the whole op again and repeat its model calls",
            f"remove inline=True from {ancestor.kind}:{ancestor.name}, or move the gate out of it",
        )
    return None


def _walk(steps: Sequence[Step], path: str, refusal: tuple[str, str] | None) -> Iterator[Finding]:
    for step in steps:
        here = f"{path} > {step.kind}:{step.name}"
        if isinstance(step, Approval):
            if refusal is not None:
                reason, hint = refusal
                yield Finding(
                    code="HITL-NESTED-001",
                    severity="error",
                    path=here,
                    message=f"this approval gate could not pause and resume: {reason}.",
                    hint=hint,
                )
            continue
        below = refusal or _refusal(step, here)
        for _, inner in children(step):
            yield from _walk(inner, here, below)


def _decisions(pipeline: Pipeline) -> Iterator[Finding]:
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, Approval) or step.decision is None:
            continue
        extra = sorted(set(step.decision.model_fields) - set(step.show))
        if extra:
            yield Finding(
                code="HITL-DECISION-001",
                severity="error",
                path=path,
                message=f"the decision model {step.decision.__name__} edits {extra}, which the gate does not show "
                f"(show={list(step.show)}).",
                hint="give the decision model only fields named like shown keys",
            )


def _unsupported(pipeline: Pipeline) -> Iterator[Finding]:
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, Approval):
            continue
        options = [
            *([f"quorum={step.quorum}"] if step.quorum != 1 else []),
            *([f"timeout={step.timeout}"] if step.timeout is not None else []),
            *([f"on_timeout={step.on_timeout!r}"] if step.on_timeout != "reject" else []),
            *([f"escalate_to={list(step.escalate_to)}"] if step.escalate_to else []),
        ]
        if options:
            yield Finding(
                code="HITL-UNSUPPORTED-001",
                severity="error",
                path=path,
                message=f"{', '.join(options)} is not supported yet: the gate would silently ignore it.",
                hint="leave these at their defaults (one decision counts; no deadline)",
            )


def rule_approvals(pipeline: Pipeline) -> Iterator[Finding]:
    """HITL-NESTED-001, HITL-DECISION-001 and HITL-UNSUPPORTED-001 for every approval gate of `pipeline`."""
    yield from _walk(pipeline.steps, pipeline.name, None)
    yield from _decisions(pipeline)
    yield from _unsupported(pipeline)
