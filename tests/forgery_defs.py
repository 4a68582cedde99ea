"""Pipelines an attacker tries to push past an approval gate, as reconstructable jobs: a draft (scripted model,
requests counted through FLUJO_TEST_REQUEST_LOG as in tests/approval_defs.py) is shown at a gate, then sent to a
`recipient`, an input the gate does not show. Signed decisions are required; the deployment sets no
`dagster/user` unless a test tags its runs with one."""

from __future__ import annotations

from datetime import timedelta

from dagster import JobDefinition
from pydantic import BaseModel

from flujo_dagster import Approval, ApprovalSettings, Pipeline, agent_step, build_definitions, step
from tests.approval_defs import runtime, writer

TIMEOUT = timedelta(seconds=2)


class Mail(BaseModel):
    topic: str
    recipient: str
    draft: str = ""
    sent: str = ""


write = agent_step("write", agent=writer, prompt="Write about {topic}", output_key="draft")


@step(name="send", output_keys=["sent"])
def send(draft: str, recipient: str) -> str:
    return f"sent to {recipient}: {draft}"


def _mail(name: str, gate: Approval) -> Pipeline:
    return Pipeline(name, context=Mail, steps=[write, gate, send])


mail = _mail("mail", Approval("review", show=["draft"], approvers=["ana", "bo"]))
late_mail = _mail("late_mail", Approval("review", show=["draft"], timeout=TIMEOUT, on_timeout="approve"))
signed = ApprovalSettings(require_signed_decisions=True, allow_unknown_requester=True)
defs = build_definitions(pipelines=[mail, late_mail], resources={"agent_runtime": runtime, "approval_settings": signed})

# the default settings: a requester nobody knows (no dagster/user) makes no decision count
closed_mail = _mail("closed_mail", Approval("review", show=["draft"]))
closed_defs = build_definitions(pipelines=[closed_mail], resources={"agent_runtime": runtime})
open_mail = _mail("open_mail", Approval("review", show=["draft"]))
open_defs = build_definitions(
    pipelines=[open_mail],
    resources={"agent_runtime": runtime, "approval_settings": ApprovalSettings(allow_unknown_requester=True)},
)


def inputs(recipient: str, topic: str = "otters") -> dict[str, object]:
    """The run config of a mail run."""
    return {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": topic, "recipient": recipient}}}}}


def mail_job() -> JobDefinition:
    """write -> review (ana or bo, signed) -> send."""
    return defs.resolve_job_def("mail")


def late_mail_job() -> JobDefinition:
    """write -> review (anyone, signed; approves after two seconds without a decision) -> send."""
    return defs.resolve_job_def("late_mail")


def closed_mail_job() -> JobDefinition:
    """write -> review (default settings: fails closed without dagster/user) -> send."""
    return closed_defs.resolve_job_def("closed_mail")


def open_mail_job() -> JobDefinition:
    """write -> review (`allow_unknown_requester=True`) -> send."""
    return open_defs.resolve_job_def("open_mail")
