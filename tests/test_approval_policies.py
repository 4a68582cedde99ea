"""Approval policies: a quorum of approvers, deadlines that reject, approve or escalate, signed decisions, and
the audit trail every request, decision, ignored decision, timeout, escalation and resume leaves in the event
log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    JobDefinition,
    build_sensor_context,
    execute_job,
    reconstructable,
)

from flujo_dagster import ConfigurationError, Map, Pipeline, audit_trail, build_definitions, load_final_context
from flujo_dagster.adapter.control.approvals import decide, escalate_due, pending, resumable, resume
from flujo_dagster.adapter.control.sensors import approvals_sensor
from flujo_dagster.config import DECISION_SECRET_ENV
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.errors import ApprovalError
from flujo_dagster.names import DECISION_PREFIX, REQUEST_PREFIX
from flujo_dagster.runtime.approvals import sign
from tests.approval_defs import REQUEST_LOG, Post, bound, by_hand
from tests.policy_defs import defs as policy_defs
from tests.policy_defs import (
    escalating_job,
    fallback,
    fallback_job,
    late_approve_job,
    late_reject_job,
    quorum,
    quorum_job,
    retried,
    retried_job,
    shelve,
    signed_job,
    signed_late_job,
    waiting_job,
)
from tests.test_approvals import INPUTS, started
from tests.test_cli import run as run_cli

SECRET = "approvers-only-secret-1234"


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    yield log


def park(job_fn: Callable[[], JobDefinition], instance: DagsterInstance) -> str:
    tags = {"dagster/user": "requester"}
    with execute_job(reconstructable(job_fn), instance=instance, run_config=INPUTS, tags=tags) as first:
        assert first.success  # a park is not a failure
        run_id = first.run_id
    assert instance.get_run_by_id(run_id).tags["flujo/parked"] == "true"  # type: ignore[union-attr]
    return run_id


def kinds(instance: DagsterInstance, run_id: str, *, of: str | None = None) -> list[str]:
    """The audit events of `run_id`'s chain (only those recorded on run `of`, if given), oldest first."""
    return [e.kind for e in audit_trail(run_id, instance=instance) if of is None or e.run_id == of]


def failure_message(instance: DagsterInstance, run_id: str, step_key: str) -> str:
    (failure,) = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert failure.step_key == step_key and failure.dagster_event is not None
    error = failure.dagster_event.step_failure_data.error  # type: ignore[union-attr]
    assert error is not None
    return error.message.rstrip()


def test_a_quorum_gate_waits_for_enough_distinct_approvers(instance: DagsterInstance, requests: Path) -> None:
    parked = park(quorum_job, instance)
    decide(parked, verdict="approve", by="ana", comment="ok", instance=instance)
    decide(parked, verdict="approve", by="ana", comment="still ok", instance=instance)  # one vote per reviewer
    (waiting,) = pending(instance=instance)
    assert waiting.waiting_for == "1 more approval(s) of 2 by ana, bo, cy"
    assert resumable(instance) == []  # not decided yet: nothing to resume
    # approvals count together only for the same content: bo's edit is not what ana approved
    decide(parked, verdict="approve", by="bo", values={"draft": "bo's draft"}, instance=instance)
    (waiting,) = pending(instance=instance)
    assert waiting.waiting_for == (
        "1 more approval(s) of 2 by ana, bo, cy (approvals count together only when they make the same edits)"
    )
    decide(parked, verdict="approve", by="cy", values={"draft": "bo's draft"}, instance=instance)
    tags = instance.get_run_by_id(parked).tags  # type: ignore[union-attr]
    assert {k for k in tags if k.startswith(DECISION_PREFIX)} == {
        "flujo/decision/review/ana",
        "flujo/decision/review/bo",
        "flujo/decision/review/cy",
    }
    resumed = resume(parked, job=reconstructable(quorum_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert requests.read_text().splitlines() == ["Write about otters"]  # the model was asked once
    assert set(started(instance, resumed)) == {"review", "publish", "flujo_context"}
    approved = [e for e in audit_trail(resumed, instance=instance) if e.kind == "approved"]
    assert [e.record["by"] for e in approved] == ["bo, cy"]
    context = load_final_context(quorum, resumed, instance=instance)
    assert context.published == "published: bo's draft"  # type: ignore[attr-defined]


def test_one_rejection_rejects_a_quorum_gate(instance: DagsterInstance, requests: Path) -> None:
    parked = park(quorum_job, instance)
    decide(parked, verdict="approve", by="ana", instance=instance)
    decide(parked, verdict="reject", by="cy", comment="off topic", instance=instance)
    resumed = resume(parked, job=reconstructable(quorum_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    message = failure_message(instance, resumed, "review")
    assert "ApprovalRejectedError: quorum > approval:review: rejected by cy at" in message
    assert message.endswith(": off topic")


def test_a_deadline_rejects_an_undecided_gate(instance: DagsterInstance, requests: Path) -> None:
    parked = park(late_reject_job, instance)
    assert resumable(instance) == []  # before the deadline
    time.sleep(2.2)
    (plan,) = resumable(instance)
    assert plan.run_id == parked
    resumed = resume(parked, job=reconstructable(late_reject_job), instance=instance)
    message = failure_message(instance, resumed, "review")
    assert "rejected by flujo (timeout)" in message and "on_timeout='reject'" in message
    assert resumable(instance) == []  # resumed once
    assert kinds(instance, parked, of=parked) == ["request", "resume"]
    assert kinds(instance, parked, of=resumed) == ["timeout", "rejected"]


def test_a_deadline_approves_when_on_timeout_approves(instance: DagsterInstance, requests: Path) -> None:
    parked = park(late_approve_job, instance)
    time.sleep(2.2)
    resumed = resume(parked, job=reconstructable(late_approve_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert requests.read_text().splitlines() == ["Write about otters"]
    assert kinds(instance, parked, of=parked) == ["request", "resume"]
    assert kinds(instance, parked, of=resumed) == ["timeout", "approved"]


def test_an_escalating_gate_widens_its_approvers_then_rejects(instance: DagsterInstance, requests: Path) -> None:
    parked = park(escalating_job, instance)
    assert escalate_due(instance) == []  # before the deadline
    time.sleep(2.2)
    assert escalate_due(instance) == [(parked, "review")]
    assert escalate_due(instance) == []  # once
    (waiting,) = pending(instance=instance)
    assert waiting.approvers == ("ana", "lead")
    decide(parked, verdict="approve", by="lead", instance=instance)
    escalation = [e for e in audit_trail(parked, instance=instance) if e.kind == "escalation"]
    assert escalation[0].record["escalate_to"] == ["lead"]
    resumed = resume(parked, job=reconstructable(escalating_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]


def test_an_escalated_gate_nobody_decides_rejects_at_the_second_deadline(
    instance: DagsterInstance, requests: Path
) -> None:
    parked = park(escalating_job, instance)
    time.sleep(2.2)
    assert escalate_due(instance) == [(parked, "review")]
    assert resumable(instance) == []  # escalated, not yet timed out
    time.sleep(2.0)
    resumed = resume(parked, job=reconstructable(escalating_job), instance=instance)
    message = failure_message(instance, resumed, "review")
    assert "rejected by flujo (timeout)" in message and "on_timeout='escalate'" in message


def test_a_decision_by_someone_not_yet_allowed_is_refused_or_ignored(instance: DagsterInstance, requests: Path) -> None:
    parked = park(escalating_job, instance)
    with pytest.raises(ApprovalError) as refused:
        decide(parked, verdict="approve", by="lead", instance=instance)
    assert str(refused.value) == (
        f"this decision on gate review of run {parked} would not count: 'lead' may not decide here (approvers: ana)"
    )
    # the same decision written as a tag by hand is ignored: reported once in the audit trail, and not resumed
    (waiting,) = pending(instance=instance)
    by_hand = bound(waiting, verdict="approve", by="lead")
    instance.add_run_tags(parked, {DECISION_PREFIX + "review": by_hand.to_tag()})
    assert resumable(instance) == [] and resumable(instance) == []
    ignored = [e for e in audit_trail(parked, instance=instance) if e.kind == "ignored"]
    assert [e.record["reason"] for e in ignored] == ["'lead' may not decide here (approvers: ana)"]
    with pytest.raises(ApprovalError, match="has no decision for the gates it is parked at"):
        resume(parked, job=reconstructable(escalating_job), instance=instance)


def test_a_wait_mode_gate_polls_until_its_deadline_then_applies_on_timeout(
    instance: DagsterInstance, requests: Path
) -> None:
    started_at = time.monotonic()
    with execute_job(reconstructable(waiting_job), instance=instance, run_config=INPUTS) as result:
        assert not result.success
        run_id = result.run_id
    assert time.monotonic() - started_at >= 3  # it waited up to its deadline
    message = failure_message(instance, run_id, "review")
    assert "rejected by flujo (timeout)" in message
    retries = instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) >= 1
    assert kinds(instance, run_id) == ["request", "timeout", "rejected"]  # one request event, not one per poll


def test_signed_decisions_count_only_with_the_right_signature(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DECISION_SECRET_ENV, SECRET)
    parked = park(signed_job, instance)
    with pytest.raises(ApprovalError, match=f"requires signed decisions: set {DECISION_SECRET_ENV}"):
        decide(parked, verdict="approve", by="ana", instance=instance)
    (waiting,) = pending(instance=instance)
    unsigned = bound(waiting, verdict="approve", by="ana")
    forged = sign(unsigned, secret="guess")
    # signed for another run, then re-bound to this one
    other_run = sign(unsigned.model_copy(update={"run_id": "another-run"}), secret=SECRET)
    other_run = other_run.model_copy(update={"run_id": parked})
    for record, reason in [
        (unsigned, "it is not signed, and this deployment requires signed decisions"),
        (forged, "its signature does not match (wrong secret, or a record changed or made for another run or gate)"),
        (other_run, "its signature does not match (wrong secret, or a record changed or made for another run or gate)"),
    ]:
        instance.add_run_tags(parked, {DECISION_PREFIX + "review": record.to_tag()})
        assert resumable(instance, secret=SECRET) == []
        assert [e.record["reason"] for e in audit_trail(parked, instance=instance) if e.kind == "ignored"][-1] == reason
    decide(parked, verdict="approve", by="ana", values={"draft": "signed draft"}, instance=instance, secret=SECRET)
    done = resume(parked, job=reconstructable(signed_job), instance=instance, secret=SECRET)
    assert instance.get_run_by_id(done).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert requests.read_text().splitlines() == ["Write about otters"]
    assert kinds(instance, done, of=done) == ["approved"]  # the gate checked the signature itself
    # the secret is in no tag, no event and no metadata of the chain
    for run_id in (parked, done):
        stored = instance.get_run_by_id(run_id)
        assert stored is not None and SECRET not in str(stored.tags)
        assert all(SECRET not in str(entry) for entry in instance.all_logs(run_id))


def test_the_gate_itself_ignores_a_badly_signed_decision(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-execution from the UI bypasses the sensor's checks: the gate checks the signature again."""
    monkeypatch.setenv(DECISION_SECRET_ENV, SECRET)
    parked = park(signed_job, instance)
    (waiting,) = pending(instance=instance)
    forged = sign(bound(waiting, verdict="approve", by="ana"), secret="guess")
    tags = {DECISION_PREFIX + "review": forged.to_tag()}
    options = by_hand(instance, parked)
    with execute_job(reconstructable(signed_job), instance=instance, reexecution_options=options, tags=tags) as again:
        assert again.success
        run = instance.get_run_by_id(again.run_id)
    assert run is not None and run.tags["flujo/parked"] == "true"
    reasons = [
        e.record["reason"]
        for e in audit_trail(again.run_id, instance=instance)
        if e.kind == "ignored" and e.run_id == again.run_id
    ]
    assert reasons == [
        "its signature does not match (wrong secret, or a record changed or made for another run or gate)"
    ]


def test_signed_gates_fail_clearly_when_the_secret_is_missing(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DECISION_SECRET_ENV, raising=False)
    with execute_job(reconstructable(signed_job), instance=instance, run_config=INPUTS) as result:
        assert not result.success
        run_id = result.run_id
    message = failure_message(instance, run_id, "review")
    assert (
        f"ConfigurationError at signed > approval:review: require_signed_decisions=True, but {DECISION_SECRET_ENV} "
        f"is not set where run {run_id} executes" in message
    )


def test_the_sensor_escalates_and_resumes_by_deadline(instance: DagsterInstance, requests: Path) -> None:
    """The sensor's tick escalates a gate whose deadline passed; once the deadline decides, a run parked outside a
    code location (execute_job), which the webserver cannot re-execute, is reported once on the run with the
    command that resumes it, the tick does not fail, and the run stays parked."""
    parked = park(escalating_job, instance)
    time.sleep(2.2)
    sensor = approvals_sensor("http://127.0.0.1:9", interval=timedelta(seconds=5))
    result = sensor.evaluate_tick(build_sensor_context(instance=instance))
    assert result.skip_message == "nothing to resume"
    assert kinds(instance, parked)[-1] == "escalation"
    time.sleep(2.0)
    for _ in range(2):
        assert sensor.evaluate_tick(build_sensor_context(instance=instance)).skip_message == "nothing to resume"
    assert kinds(instance, parked)[-1] == "resume_needed" and kinds(instance, parked).count("resume_needed") == 1
    assert [p.run_id for p in resumable(instance)] == [parked]


def test_policies_that_could_never_work_are_refused_when_the_definitions_load() -> None:
    gates = [
        Approval("a", show=["topic"], approvers=["ana"], quorum=2),
        Approval("b", show=["topic"], quorum=0),
        Approval("c", show=["topic"], on_timeout="approve"),
        Approval("d", show=["topic"], approvers=["ana"], timeout=timedelta(hours=1), on_timeout="escalate"),
        Approval("e", show=["topic"], timeout=timedelta(hours=1), escalate_to=["lead"]),
        Approval("f", show=["topic"], timeout=timedelta(days=3_000_000)),
    ]
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[Pipeline("p", context=Post, steps=gates)])
    found = [(f.code, f.path, f.message) for f in raised.value.findings if f.code.startswith("HITL")]
    assert found == [
        (
            "HITL-POLICY-001",
            "p > approval:a",
            "quorum=2 needs more approvers than the 1 listed (ana), so it could never be approved.",
        ),
        ("HITL-POLICY-001", "p > approval:b", "quorum=0 would approve with no approval."),
        ("HITL-POLICY-001", "p > approval:c", "on_timeout='approve' without a timeout would never apply."),
        ("HITL-POLICY-001", "p > approval:d", "on_timeout='escalate' with no one to escalate to."),
        ("HITL-POLICY-001", "p > approval:e", "escalate_to is set but on_timeout='reject'."),
        (
            "HITL-POLICY-001",
            "p > approval:e",
            "escalate_to widens the approvers, but anyone may already decide (approvers=None).",
        ),
        ("HITL-POLICY-001", "p > approval:f", "timeout=3000000 days, 0:00:00 is longer than 36500 days."),
    ]


def test_every_step_of_an_approval_is_an_audit_event_readable_after_the_run(
    instance: DagsterInstance, dagster_home: Path, requests: Path
) -> None:
    parked = park(quorum_job, instance)
    decide(parked, verdict="approve", by="ana", comment="good", instance=instance)
    decide(parked, verdict="approve", by="bo", instance=instance)
    resumed = resume(parked, job=reconstructable(quorum_job), instance=instance)
    assert kinds(instance, parked, of=parked) == ["request", "decision", "decision", "resume"]
    assert kinds(instance, parked, of=resumed) == ["approved"]
    request, first, _, resume_event = audit_trail(parked, instance=instance)[:4]
    assert (request.gate, request.record["path"]) == ("review", "quorum > approval:review")
    assert first.record == {
        "kind": "decision",
        "gate": "review",
        "verdict": "approve",
        "by": "ana",
        "comment": "good",
        "tag": "flujo/decision/review/ana",
        "signed": False,
        "record": json.loads(instance.get_run_by_id(parked).tags["flujo/decision/review/ana"]),  # type: ignore[union-attr]
    }
    assert resume_event.record["resumed_run_id"] == resumed
    # the CLI reads the same trail from the instance, from any run of the chain
    listed = run_cli("audit", resumed, home=dagster_home)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[-1] == "5 audit event(s)"
    assert [line.split()[2] for line in lines[:-1]] == ["request", "decision", "decision", "resume", "approved"]
    assert "approved    review  by ana, bo" in lines[-2]


def test_on_reject_steps_run_instead_of_the_rest_of_the_sequence(instance: DagsterInstance, requests: Path) -> None:
    parked = park(fallback_job, instance)
    decide(parked, verdict="reject", by="ana", comment="not yet", instance=instance)
    resumed = resume(parked, job=reconstructable(fallback_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert set(started(instance, resumed)) == {"review", "review__shelve", "review__flujo_join", "flujo_context"}
    context = load_final_context(fallback, resumed, instance=instance)
    assert context == Post(topic="otters", draft="draft about otters", published="shelved: draft about otters")
    assert requests.read_text().splitlines() == ["Write about otters"]


def test_an_approved_gate_with_on_reject_steps_runs_the_rest_with_the_edits(
    instance: DagsterInstance, requests: Path
) -> None:
    parked = park(fallback_job, instance)
    decide(parked, verdict="approve", by="ana", values={"draft": "better"}, instance=instance)
    resumed = resume(parked, job=reconstructable(fallback_job), instance=instance)
    assert set(started(instance, resumed)) == {"review", "publish", "review__flujo_join", "flujo_context"}
    context = load_final_context(fallback, resumed, instance=instance)
    assert context == Post(topic="otters", draft="better", published="published: better")


def test_a_rejection_in_a_loop_iteration_lets_the_next_iteration_try_again(
    instance: DagsterInstance, requests: Path
) -> None:
    parked = park(retried_job, instance)
    decide(parked, verdict="reject", by="ana", comment="again", instance=instance)
    second = resume(parked, job=reconstructable(retried_job), instance=instance)
    (waiting,) = pending(instance=instance)
    assert (waiting.run_id, waiting.gate) == (second, "rounds_loop__i2__review")
    decide(second, verdict="approve", by="ana", instance=instance)
    done = resume(second, job=reconstructable(retried_job), instance=instance)
    context = load_final_context(retried, done, instance=instance)
    assert context.published == "published: draft about otters" and context.rounds == 2  # type: ignore[attr-defined]
    assert requests.read_text().splitlines() == ["Write about otters", "Write about otters"]  # once per round
    # the rejected round's outcome was shelved before the second round ran
    shelved = [e.step_key for e in instance.all_logs(second, of_type=DagsterEventType.STEP_SUCCESS)]
    assert "rounds_loop__i1__review__shelve" in shelved


def test_on_reject_is_refused_inside_an_expanded_map() -> None:
    body = [Approval("check", show=["topic"], on_reject=[shelve])]
    pipeline = Pipeline(
        "m",
        context=Post,
        steps=[Map("each", over="sources", item="topic", body=body, result="topic", into="sources", inline=False)],
    )
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[pipeline])
    found = [(f.code, f.path, f.message) for f in raised.value.findings if f.code.startswith("HITL")]
    assert found == [
        (
            "HITL-NESTED-001",
            "m > map:each > approval:check",
            "this approval gate could not run its on_reject steps: inside the body of a map with inline=False a "
            "gate cannot route an element to other steps.",
        )
    ]


def test_a_sealed_request_copied_from_another_run_does_not_move_the_deadline(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DECISION_SECRET_ENV, SECRET)
    first = park(signed_late_job, instance)
    time.sleep(2.2)  # the first run's deadline has passed
    copied = instance.get_run_by_id(first).tags[REQUEST_PREFIX + "review"]  # type: ignore[union-attr]
    tags = {"dagster/user": "requester", REQUEST_PREFIX + "review": copied}
    with execute_job(reconstructable(signed_late_job), instance=instance, run_config=INPUTS, tags=tags) as second:
        assert second.success  # parked: its own deadline runs from its own request
    run = instance.get_run_by_id(second.run_id)
    assert run is not None and run.tags["flujo/parked"] == "true"
    assert kinds(instance, second.run_id, of=second.run_id) == ["request"]


def test_a_signature_made_elsewhere_is_recorded_without_the_secret_and_checked_by_the_gate(
    instance: DagsterInstance, dagster_home: Path, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Launchpad route: `flujo-dagster sign` where the secret is, `flujo_decide` with `at` and `signature`
    where it is not."""
    monkeypatch.setenv(DECISION_SECRET_ENV, SECRET)
    parked = park(signed_job, instance)
    signed_out = run_cli("sign", parked, "--by", "ana", "--verdict", "approve", home=dagster_home)
    assert signed_out.returncode == 0, signed_out.stderr
    assert SECRET not in signed_out.stdout
    fields = dict(line.split(": ", 1) for line in signed_out.stdout.splitlines())
    monkeypatch.delenv(DECISION_SECRET_ENV)
    decide(parked, verdict="approve", by="ana", at=fields["at"], signature=fields["signature"], instance=instance)
    monkeypatch.setenv(DECISION_SECRET_ENV, SECRET)  # where the gate runs
    done = resume(parked, job=reconstructable(signed_job), instance=instance)
    assert instance.get_run_by_id(done).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]


def test_a_rejection_carrying_edits_still_rejects(instance: DagsterInstance, requests: Path) -> None:
    parked = park(quorum_job, instance)
    with pytest.raises(ApprovalError, match="a rejection edits nothing"):
        decide(parked, verdict="reject", by="ana", values={"draft": "x"}, instance=instance)
    (waiting,) = pending(instance=instance)
    by_hand = bound(waiting, verdict="reject", by="cy", values={"nope": 1})
    instance.add_run_tags(parked, {DECISION_PREFIX + "review/cy": by_hand.to_tag()})
    resumed = resume(parked, job=reconstructable(quorum_job), instance=instance)
    assert "rejected by cy" in failure_message(instance, resumed, "review")


def test_a_decision_for_a_gate_the_run_does_not_wait_at_is_reported(instance: DagsterInstance, requests: Path) -> None:
    parked = park(quorum_job, instance)
    (waiting,) = pending(instance=instance)
    typo = bound(waiting, verdict="approve", by="ana")
    instance.add_run_tags(parked, {DECISION_PREFIX + "revew": typo.to_tag()})
    assert resumable(instance) == []
    ignored = [e for e in audit_trail(parked, instance=instance) if e.kind == "ignored"]
    assert [(e.gate, e.record["reason"]) for e in ignored] == [
        ("revew", "no gate 'revew' waits in this run (gates waiting: review)")
    ]


def test_the_decide_job_decides_only_as_the_user_who_launched_it(instance: DagsterInstance, requests: Path) -> None:
    parked = park(quorum_job, instance)
    config = {"ops": {"flujo_decide": {"config": {"run_id": parked, "decision": "approve", "by": "ana"}}}}
    job = policy_defs.resolve_job_def("flujo_decide")
    result = job.execute_in_process(
        run_config=config, instance=instance, tags={"dagster/user": "bo"}, raise_on_error=False
    )
    assert not result.success
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert "this run was launched by 'bo', who may decide only as themselves (by='ana')" in str(failure.dagster_event)
    assert pending(instance=instance)[0].waiting_for == "2 more approval(s) of 2 by ana, bo, cy"
