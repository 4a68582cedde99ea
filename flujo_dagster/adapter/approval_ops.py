"""The approval gate op: approves, rejects, or parks the run until a reviewer decides (run tags)."""

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from dagster import Failure, In, MetadataValue, OpDefinition, OpExecutionContext, Out, Output, RetryRequested
from dagster import Nothing as DagsterNothing
from pydantic import ValidationError

from flujo_dagster.adapter import metadata as md
from flujo_dagster.adapter.flow_ops import AFTER_INPUT
from flujo_dagster.adapter.naming import io_name
from flujo_dagster.adapter.ops import StepWiring, ins_for, not_retried, outs_for
from flujo_dagster.adapter.types import key_type
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ApprovalRejectedError
from flujo_dagster.runtime.approvals import (
    AWAITING_PREFIX,
    DECISION_PREFIX,
    REQUEST_PREFIX,
    Decision,
    check_decision,
    payload_hash,
)
from flujo_dagster.runtime.values import jsonable

__all__ = [
    "APPROVED_OUTPUT",
    "NO_RUN_RETRY_TAG",
    "PARKED_TAG",
    "RETRY_BEFORE_PARK_TAG",
    "USER_TAG",
    "approval_op",
    "preview",
]

APPROVED_OUTPUT = "flujo_approved"
"""The gate's `Nothing` output: every step after the gate in its sequence waits for it."""
PARKED_TAG = "flujo/parked"
USER_TAG = "dagster/user"
NO_RUN_RETRY_TAG = "dagster/retry_on_asset_or_op_failure"
RETRY_BEFORE_PARK_TAG = "flujo/retry_before_park"
"""What `dagster/retry_on_asset_or_op_failure` was before the first park: a resume restores it."""
PREVIEW_CHARS = 2_000
WAIT_DELAYS_S = (5, 10, 20, 40, 60)


def preview(shown: dict[str, Any]) -> str:
    """The shown keys as Markdown for a reviewer (each value's JSON, size-bounded)."""
    parts = []
    for key, value in shown.items():
        text = value if isinstance(value, str) else repr(value)
        if len(text) > PREVIEW_CHARS:
            text = text[:PREVIEW_CHARS] + f"... ({len(text)} characters)"
        parts.append(f"**{key}**\n\n```\n{text}\n```")
    return "\n\n".join(parts)


def _commands(run_id: str, node: str) -> str:
    return (
        f"flujo-dagster approve {run_id} --gate {node} --by NAME [--comment TEXT]\n"
        f"flujo-dagster reject {run_id} --gate {node} --by NAME --comment TEXT"
    )


def approval_op(pipeline: Pipeline, gate: Approval, wiring: StepWiring) -> OpDefinition:
    """The gate op of `gate`: re-reads the run's tags (the run's own snapshot is stale) for a decision bound to
    the shown values; goes on with them (edits applied), fails on a rejection, or parks the run."""
    node = wiring.op

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        shown = {k: inputs[io_name(k)] for k in gate.show}
        dumped = {k: jsonable(key_type(pipeline.name, k, pipeline.fields[k]).adapter, v) for k, v in shown.items()}
        digest = payload_hash(dumped)
        run = context.instance.get_run_by_id(context.run_id)
        tags = run.tags if run is not None else context.run.tags
        decision: Decision | None = None
        raw = tags.get(DECISION_PREFIX + node)
        if raw is not None:
            checked = check_decision(raw, gate, expected_hash=digest, requester=tags.get(USER_TAG))
            if not isinstance(checked, str):
                checked = _typed_edits(pipeline, checked)
            if isinstance(checked, str):
                context.log.warning(f"{wiring.path}: ignored the decision in tag {DECISION_PREFIX + node}: {checked}")
            else:
                decision = checked
        if decision is None:
            _request(context, gate, wiring, node, digest)  # so that a reviewer can decide while it waits
            if gate.mode == "wait" and context.retry_number < len(WAIT_DELAYS_S):
                raise RetryRequested(
                    max_retries=len(WAIT_DELAYS_S), seconds_to_wait=WAIT_DELAYS_S[context.retry_number]
                )
            _park(context, gate, wiring, node, digest, dumped)
        assert decision is not None
        record: dict[str, Any] = {
            md.STEP_PATH: wiring.path,
            "flujo/approval/verdict": decision.verdict,
            "flujo/approval/by": decision.by,
            "flujo/approval/at": decision.at,
            "flujo/approval/comment": decision.comment,
            "flujo/approval/payload_hash": digest,
            "flujo/approval/edited": ", ".join(sorted(decision.values)),
        }
        if decision.verdict == "reject":
            why = f": {decision.comment}" if decision.comment else ""
            error = ApprovalRejectedError(f"{wiring.path}: rejected by {decision.by} at {decision.at}{why}")
            raise not_retried(error, wiring) from error
        values = {**shown, **decision.values}
        for key in gate.show:
            yield Output(values[key], io_name(key))
        yield Output(None, APPROVED_OUTPUT, metadata=record)

    outs: dict[str, Out] = {**outs_for(pipeline, gate.show), APPROVED_OUTPUT: Out(DagsterNothing)}
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        # `after`: the gate also waits for what the steps after it read from before it (see graph_builder)
        ins={**ins_for(pipeline, wiring.reads, gated=wiring.gated), AFTER_INPUT: In(DagsterNothing)},
        outs=outs,
        description=f"approval gate {wiring.path}: shows {', '.join(gate.show)} to a reviewer",
        tags={md.KIND: "approval", md.STEP_PATH: wiring.path},
    )


def _typed_edits(pipeline: Pipeline, decision: Decision) -> Decision | str:
    """`decision` with its edited values as their keys' own types (what later steps read), or why one does
    not fit its key."""
    typed: dict[str, Any] = {}
    for key, value in decision.values.items():
        try:
            typed[key] = key_type(pipeline.name, key, pipeline.fields[key]).coerce(value)
        except ValidationError as exc:
            return f"its edited value of {key!r} is not a valid {key!r}: {exc.errors(include_url=False)}"
    return replace(decision, values=typed)


def _park(
    context: OpExecutionContext,
    gate: Approval,
    wiring: StepWiring,
    node: str,
    digest: str,
    dumped: dict[str, Any],
) -> None:
    """Stop the run here (no worker held): Dagster's run retries must not relaunch it, and alerting tells it
    from a failure by the `flujo/parked` tag."""
    run = context.instance.get_run_by_id(context.run_id)
    tags = run.tags if run is not None else context.run.tags
    before = {RETRY_BEFORE_PARK_TAG: tags.get(NO_RUN_RETRY_TAG, "true")} if RETRY_BEFORE_PARK_TAG not in tags else {}
    context.instance.add_run_tags(context.run_id, {**before, PARKED_TAG: "true", NO_RUN_RETRY_TAG: "false"})
    who = ", ".join(gate.approvers) if gate.approvers is not None else "anyone"
    raise Failure(
        description=f"parked at {wiring.path}: waiting for an approval by {who}; decide with\n"
        + _commands(context.run_id, node),
        metadata={
            md.STEP_PATH: wiring.path,
            PARKED_TAG: True,
            "flujo/approval/payload": MetadataValue.md(preview(dumped)),
            "flujo/approval/payload_hash": digest,
            "flujo/approval/approvers": who,
            "flujo/approval/commands": MetadataValue.text(_commands(context.run_id, node)),
        },
        allow_retries=False,
    )


def _request(context: OpExecutionContext, gate: Approval, wiring: StepWiring, node: str, digest: str) -> None:
    """Record on the run what the gate waits for: `flujo/awaiting/<gate>=pending` and the request (step path,
    payload hash, who may approve)."""
    request = {"path": wiring.path, "payload_hash": digest, "approvers": gate.approvers, "show": list(gate.show)}
    context.instance.add_run_tags(
        context.run_id, {AWAITING_PREFIX + node: "pending", REQUEST_PREFIX + node: _json(request)}
    )


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
