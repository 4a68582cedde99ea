"""Pipelines whose approval gates need a quorum, have deadlines, or take signed decisions only, as reconstructable
jobs for `execute_job` resumes. Each writes a draft with a scripted model (requests counted through
FLUJO_TEST_REQUEST_LOG, as in tests/approval_defs.py), passes a gate, and publishes."""

from __future__ import annotations

from datetime import timedelta

from dagster import JobDefinition

from flujo_dagster import Approval, ApprovalSettings, Loop, Pipeline, build_definitions, step
from tests.approval_defs import UNKNOWN_OK, Edit, Post, publish, runtime, tick, write

TIMEOUT = timedelta(seconds=2)


def _gated(name: str, gate: Approval) -> Pipeline:
    return Pipeline(name, context=Post, steps=[write, gate, publish])


quorum = _gated("quorum", Approval("review", show=["draft"], decision=Edit, approvers=["ana", "bo", "cy"], quorum=2))
late_reject = _gated("late_reject", Approval("review", show=["draft"], timeout=TIMEOUT))
late_approve = _gated("late_approve", Approval("review", show=["draft"], timeout=TIMEOUT, on_timeout="approve"))
escalating = _gated(
    "escalating",
    Approval("review", show=["draft"], approvers=["ana"], timeout=TIMEOUT, on_timeout="escalate", escalate_to=["lead"]),
)
waiting = _gated("waiting", Approval("review", show=["draft"], mode="wait", timeout=timedelta(seconds=3)))
signed = _gated("signed", Approval("review", show=["draft"], decision=Edit))


@step(name="shelve", output_keys=["published"])
def shelve(draft: str) -> str:
    return f"shelved: {draft}"


fallback = _gated("fallback", Approval("review", show=["draft"], decision=Edit, on_reject=[shelve]))
retried = Pipeline(
    "retried",
    context=Post,
    steps=[
        Loop(
            "rounds_loop",
            body=[tick, write, Approval("review", show=["draft"], on_reject=[shelve]), publish],
            until=lambda published: published.startswith("published"),
            max_iterations=2,
        )
    ],
)

defs = build_definitions(
    pipelines=[quorum, late_reject, late_approve, escalating, waiting, fallback, retried],
    resources={"agent_runtime": runtime, "approval_settings": UNKNOWN_OK},
)
signed_late = _gated("signed_late", Approval("review", show=["draft"], timeout=TIMEOUT, on_timeout="approve"))
signed_defs = build_definitions(
    pipelines=[signed, signed_late],
    resources={
        "agent_runtime": runtime,
        "approval_settings": ApprovalSettings(require_signed_decisions=True, allow_unknown_requester=True),
    },
)


def quorum_job() -> JobDefinition:
    """A gate needing two of ana, bo and cy."""
    return defs.resolve_job_def("quorum")


def late_reject_job() -> JobDefinition:
    """A gate rejecting after two seconds without a decision."""
    return defs.resolve_job_def("late_reject")


def late_approve_job() -> JobDefinition:
    """A gate approving after two seconds without a decision."""
    return defs.resolve_job_def("late_approve")


def escalating_job() -> JobDefinition:
    """A gate for ana, escalated to lead after two seconds, rejecting after four."""
    return defs.resolve_job_def("escalating")


def waiting_job() -> JobDefinition:
    """A `mode="wait"` gate polling for three seconds, then rejecting."""
    return defs.resolve_job_def("waiting")


def signed_job() -> JobDefinition:
    """A gate taking signed decisions only."""
    return signed_defs.resolve_job_def("signed")


def fallback_job() -> JobDefinition:
    """write -> review (on_reject: shelve) -> publish."""
    return defs.resolve_job_def("fallback")


def retried_job() -> JobDefinition:
    """A loop of two rounds: a rejected draft is shelved and the loop writes another; an approved one is
    published and the loop ends."""
    return defs.resolve_job_def("retried")


def signed_late_job() -> JobDefinition:
    """A signed-decisions gate approving after two seconds without a decision."""
    return signed_defs.resolve_job_def("signed_late")
