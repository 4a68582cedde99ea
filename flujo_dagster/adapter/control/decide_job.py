"""`flujo_decide`: a job a reviewer launches from the Launchpad to record a decision on a parked run."""

import functools
from typing import Any

from dagster import (
    Enum,
    EnumValue,
    Failure,
    Field,
    GraphDefinition,
    JobDefinition,
    OpDefinition,
    OpExecutionContext,
    Permissive,
)

from flujo_dagster.adapter.control.approvals import decide
from flujo_dagster.errors import ApprovalError
from flujo_dagster.names import DECIDE_JOB, USER_TAG
from flujo_dagster.runtime.approvals import normal_name

__all__ = ["DECIDE_JOB", "decide_job"]


_CONFIG = {
    "run_id": Field(str, description="the parked run"),
    "gate": Field(str, is_required=False, description="the gate's op name, when the run is parked at several"),
    "decision": Field(Enum("FlujoVerdict", [EnumValue("approve"), EnumValue("reject")])),
    "by": Field(str, description="who decides"),
    "comment": Field(str, default_value=""),
    "values": Field(
        Permissive(),  # type: ignore[no-untyped-call]
        is_required=False,
        description="edited values of shown keys (approve only)",
    ),
    "at": Field(str, is_required=False, description="the decision's time, as signed (signed decisions only)"),
    "signature": Field(
        str,
        is_required=False,
        description="the decision's HMAC, made where the secret is held (require_signed_decisions); never the secret",
    ),
}


def _compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> None:
    config = context.op_config
    user = context.run.tags.get(USER_TAG)  # set by deployments that authenticate their users
    if user is not None and normal_name(config["by"]) != normal_name(user):
        raise Failure(
            description=f"ApprovalError: this run was launched by {user!r}, who may decide only as themselves "
            f"(by={config['by']!r})",
            allow_retries=False,
        )
    try:
        recorded = decide(
            config["run_id"],
            verdict=config["decision"],
            by=config["by"],
            gate=config.get("gate"),
            comment=config.get("comment", ""),
            values=config.get("values"),
            instance=context.instance,
            at=config.get("at"),
            signature=config.get("signature"),
        )
    except ApprovalError as exc:
        raise Failure(description=f"ApprovalError: {exc}", allow_retries=False) from exc
    signed = " (signed)" if recorded.signature else ""  # the signature itself is never logged
    context.log.info(
        f"recorded {recorded.verdict}{signed} by {recorded.by} on gate {recorded.gate} of run {recorded.run_id} "
        f"({recorded.path}), payload {recorded.payload_hash[:12]}..., state {recorded.state_hash[:12]}..."
    )


@functools.cache
def decide_job() -> JobDefinition:
    """The `flujo_decide` job: config `run_id`, `gate` (optional), `decision` (approve | reject), `by`,
    `comment`, `values`. It records the decision; the `flujo_approvals` sensor (or `resume`) resumes the run.
    One object per process, so that several `build_definitions` results merge in one code location."""
    op = OpDefinition(
        compute_fn=_compute,
        name=DECIDE_JOB,
        config_schema=_CONFIG,
        outs={},
        description="Record an approval decision on a parked run (the approvals sensor resumes it).",
    )
    return GraphDefinition(name=f"{DECIDE_JOB}_graph", node_defs=[op]).to_job(name=DECIDE_JOB)
