"""Approval gates checked when the definitions load: HITL-NESTED-001 (a gate placed where a run could not pause
at it and resume without running completed work again), HITL-DECISION-001 (a decision model that edits keys
the gate does not show) and HITL-POLICY-001 (approvers, quorum and deadline that could never work as written)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Map, Parallel, runs_in_one_op
from flujo_dagster.dsl.flow import children, walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import Step
from flujo_dagster.names import step_path
from flujo_dagster.validation.findings import Finding

MAX_TIMEOUT = timedelta(days=36_500)
"""The longest gate deadline HITL-POLICY-001 accepts (100 years): past it, deadlines would leave datetime's range."""

__all__ = ["rule_approvals"]


def _refusal(ancestor: Step, where: str, *, in_fanout: bool) -> tuple[str, str] | None:
    """Why a gate below `ancestor` (at `where`) cannot pause and resume, and what to do; None when it can.

    A gate can resume wherever its ancestors are all expanded into ops (see `runs_in_one_op`); `in_fanout`: `ancestor`
    stands in the body of a Map expanded with `inline=False`, where control flow runs in one op per element."""
    if not runs_in_one_op(ancestor, in_fanout=in_fanout):
        return None
    again = "resuming would run the whole op again and repeat its model calls"
    if not ancestor.inline:
        return (
            f"{where} runs in one op per element (control flow inside the body of a map with inline=False "
            f"is not expanded), so {again}",
            f"move the gate out of {ancestor.kind}:{ancestor.name}, directly into the map's body or after the map",
        )
    default = ", the default" if isinstance(ancestor, Map | Parallel) else ""
    return (
        f"{where} runs in one op (inline=True{default}), so {again}",
        f"set inline=False on {ancestor.kind}:{ancestor.name}, or move the gate out of it",
    )


def _walk(
    pipeline: Pipeline, steps: Sequence[Step], path: str, refusal: tuple[str, str] | None, in_fanout: bool = False
) -> Iterator[Finding]:
    """HITL-NESTED-001 for each gate below a node that runs in one op, naming the outermost such node."""
    for step in steps:
        here = step_path(path, step.kind, step.name)
        if isinstance(step, Approval):
            if refusal is not None:
                reason, hint = refusal
                yield Finding(
                    code="HITL-NESTED-001",
                    severity="error",
                    pipeline=pipeline.name,
                    path=here,
                    message=f"this approval gate could not pause and resume: {reason}.",
                    hint=hint,
                )
            elif step.on_reject and in_fanout:
                yield Finding(
                    code="HITL-NESTED-001",
                    severity="error",
                    pipeline=pipeline.name,
                    path=here,
                    message="this approval gate could not run its on_reject steps: inside the body of a map with "
                    "inline=False a gate cannot route an element to other steps.",
                    hint="drop on_reject (a rejection then fails the element), or move the gate after the map",
                )
            for _, inner in children(step):  # gates among its on_reject steps
                yield from _walk(pipeline, inner, here, refusal, in_fanout)
            continue
        below = refusal or _refusal(step, here, in_fanout=in_fanout)
        fanout = in_fanout or (isinstance(step, Map) and not runs_in_one_op(step, in_fanout=in_fanout))
        for _, inner in children(step):
            yield from _walk(pipeline, inner, here, below, fanout)


def _decisions(pipeline: Pipeline) -> Iterator[Finding]:
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, Approval) or step.decision is None:
            continue
        extra = sorted(set(step.decision.model_fields) - set(step.show))
        if extra:
            yield Finding(
                code="HITL-DECISION-001",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"the decision model {step.decision.__name__} edits {extra}, which the gate does not show "
                f"(show={list(step.show)}).",
                hint="give the decision model only fields named like shown keys",
            )


def _policy_problems(gate: Approval) -> list[tuple[str, str]]:
    """What is wrong with `gate`'s approvers, quorum and deadline, with what to do."""
    problems = []
    if gate.quorum < 1:
        problems.append((f"quorum={gate.quorum} would approve with no approval", "use quorum >= 1"))
    elif gate.approvers is not None and gate.quorum > len(set(gate.approvers)):
        problems.append(
            (
                f"quorum={gate.quorum} needs more approvers than the {len(set(gate.approvers))} listed "
                f"({', '.join(gate.approvers)}), so it could never be approved",
                "list more approvers or lower the quorum",
            )
        )
    if gate.timeout is not None and gate.timeout.total_seconds() <= 0:
        problems.append((f"timeout={gate.timeout} is not a positive duration", "use e.g. timeout=timedelta(hours=24)"))
    if gate.timeout is not None and gate.timeout > MAX_TIMEOUT:
        problems.append(
            (f"timeout={gate.timeout} is longer than {MAX_TIMEOUT.days} days", "leave timeout=None for no deadline")
        )
    if gate.timeout is None and (gate.on_timeout != "reject" or gate.escalate_to):
        problems.append(
            (
                f"on_timeout={gate.on_timeout!r}{' and escalate_to' if gate.escalate_to else ''} without a timeout "
                "would never apply",
                "add timeout=... or leave on_timeout and escalate_to at their defaults",
            )
        )
    if gate.on_timeout == "escalate" and not gate.escalate_to:
        problems.append(("on_timeout='escalate' with no one to escalate to", "name them with escalate_to=[...]"))
    if gate.escalate_to and gate.on_timeout != "escalate":
        problems.append(
            (f"escalate_to is set but on_timeout={gate.on_timeout!r}", "use on_timeout='escalate' or drop escalate_to")
        )
    if gate.escalate_to and gate.approvers is None:
        problems.append(
            ("escalate_to widens the approvers, but anyone may already decide (approvers=None)", "list approvers=[...]")
        )
    return problems


def _policies(pipeline: Pipeline) -> Iterator[Finding]:
    for path, step in walk(pipeline.steps, pipeline.name):
        if not isinstance(step, Approval):
            continue
        for message, hint in _policy_problems(step):
            yield Finding(
                code="HITL-POLICY-001",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"{message}.",
                hint=hint,
            )


def rule_approvals(pipeline: Pipeline) -> Iterator[Finding]:
    """HITL-NESTED-001, HITL-DECISION-001 and HITL-POLICY-001 for every approval gate of `pipeline`."""
    yield from _walk(pipeline, pipeline.steps, pipeline.name, None)
    yield from _decisions(pipeline)
    yield from _policies(pipeline)
