"""Forging an approval as someone who can only launch runs and add tags (any Dagster OSS UI user), with signed
decisions on: each attack of issue 13 run against a real instance and the real IO manager, and refused. A
decision counts only for the exact run state it was made for, from the run's proven re-execution chain, and
decisions are append-only; a requester nobody knows makes no decision count unless the deployment says so."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, JobDefinition, ReexecutionOptions, execute_job, reconstructable

from flujo_dagster import ApprovalError, load_final_context
from flujo_dagster.adapter.control.approvals import decide, pending, prepare_decision, resumable, resume
from flujo_dagster.adapter.control.audit import run_audit
from flujo_dagster.config import DECISION_SECRET_ENV
from flujo_dagster.names import decision_tag
from tests.approval_defs import REQUEST_LOG, bound
from tests.forgery_defs import (
    closed_mail_job,
    inputs,
    late_mail_job,
    mail,
    mail_job,
    open_mail,
    open_mail_job,
)
from tests.forgery_defs import defs as forgery_defs

SECRET = "approvers-only-secret-1234"
ATTACKER = "attacker@example.com"


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    monkeypatch.setenv(DECISION_SECRET_ENV, SECRET)
    yield log


def park(job_fn: Callable[[], JobDefinition], instance: DagsterInstance, *, user: str | None = None) -> str:
    """Launch a mail run to the victim; it parks at the gate (whatever status a park ends with)."""
    tags = {"dagster/user": user} if user is not None else {}
    config = inputs("victim@example.com")
    with execute_job(reconstructable(job_fn), instance=instance, run_config=config, tags=tags) as first:
        run_id = first.run_id
    assert [p.run_id for p in pending(instance=instance, secret=SECRET) if p.run_id == run_id] == [run_id]
    return run_id


def attack(
    job_fn: Callable[[], JobDefinition],
    instance: DagsterInstance,
    parent: str,
    tags: dict[str, str],
    *,
    recipient: str | None = None,
) -> str:
    """What a UI user can launch: a re-execution of `parent` from its gate (or, with another `recipient`, of
    every step with other inputs) carrying the tags they choose. Returns the run's id."""
    options = ReexecutionOptions(parent_run_id=parent, step_selection=None if recipient else ["review*"])
    config = inputs(recipient) if recipient else None
    with execute_job(
        reconstructable(job_fn),
        instance=instance,
        run_config=config,
        reexecution_options=options,
        tags=tags,
        raise_on_error=False,
    ) as result:
        return result.run_id


def sent(instance: DagsterInstance, run_id: str) -> bool:
    """Whether the `send` step ran in `run_id`."""
    return any(e.step_key == "send" for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS))


def gate_failed(instance: DagsterInstance, run_id: str) -> str:
    """The message of the gate step's failure in `run_id` (a rejection), or "" when it did not fail."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        if entry.step_key == "review" and entry.dagster_event is not None:
            error = entry.dagster_event.step_failure_data.error  # type: ignore[union-attr]
            return error.message if error is not None else ""
    return ""


def ignored(instance: DagsterInstance, run_id: str) -> list[str]:
    """The reasons the gate of `run_id` gave for the decisions it ignored."""
    return [e.record["reason"] for e in run_audit(instance, run_id) if e.kind == "ignored"]


def tag_of(instance: DagsterInstance, run_id: str, reviewer: str) -> str:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.tags[decision_tag("review", reviewer)]


def test_a_signed_approval_copied_to_a_run_with_other_inputs_counts_nowhere(
    instance: DagsterInstance, requests: Path
) -> None:
    """Reused approval: a run naming the approved run as its parent and root, with another recipient and the
    approval's tag copied, parks; the victim's own run still resumes and sends to the victim."""
    victim = park(mail_job, instance)
    decide(victim, verdict="approve", by="ana", instance=instance, secret=SECRET)
    copied = {decision_tag("review", "ana"): tag_of(instance, victim, "ana")}
    forged = attack(mail_job, instance, victim, copied, recipient=ATTACKER)
    run = instance.get_run_by_id(forged)
    assert run is not None and (run.parent_run_id, run.root_run_id) == (victim, victim)  # the client's claim
    assert not sent(instance, forged) and run.tags["flujo/parked"] == "true"
    assert ignored(instance, forged) == [
        f"it was made on run {victim}, which is not this run or an earlier run of its re-execution chain with the "
        "same inputs parked at this gate"
    ]
    assert forged not in [p.run_id for p in resumable(instance, secret=SECRET)]
    done = resume(victim, job=reconstructable(mail_job), instance=instance, secret=SECRET)
    assert load_final_context(mail, done, instance=instance).sent.startswith("sent to victim@example.com")  # type: ignore[attr-defined]


def test_extra_tags_on_a_re_execution_do_not_erase_a_rejection(instance: DagsterInstance, requests: Path) -> None:
    """Erased rejection: ana approves, bo rejects; a re-execution whose extra tags blank bo's tag is rejected."""
    parked = park(mail_job, instance)
    decide(parked, verdict="approve", by="ana", instance=instance, secret=SECRET)
    decide(parked, verdict="reject", by="bo", comment="no", instance=instance, secret=SECRET)
    parent = instance.get_run_by_id(parked)
    assert parent is not None
    blanked = {**parent.tags, decision_tag("review", "bo"): "{}"}  # what launchRunReexecution's extraTags do
    again = attack(mail_job, instance, parked, blanked)
    assert not sent(instance, again)
    assert "rejected by bo" in gate_failed(instance, again)


def test_an_older_approval_replayed_over_a_later_rejection_is_ignored(
    instance: DagsterInstance, requests: Path
) -> None:
    """Rolled-back rejection: ana approves, then rejects (her tag now holds the rejection); replaying her older
    signed approval as a re-execution's tag does not bring it back."""
    parked = park(mail_job, instance)
    decide(parked, verdict="approve", by="ana", instance=instance, secret=SECRET)
    older = tag_of(instance, parked, "ana")
    decide(parked, verdict="reject", by="ana", comment="changed my mind", instance=instance, secret=SECRET)
    again = attack(mail_job, instance, parked, {decision_tag("review", "ana"): older})
    assert not sent(instance, again)
    assert "rejected by ana" in gate_failed(instance, again) and "changed my mind" in gate_failed(instance, again)
    # and once rejected, an approval can no longer be recorded: a rejection is final
    with pytest.raises(ApprovalError, match="ana rejected it at .*, and a rejection is final"):
        decide(parked, verdict="approve", by="bo", instance=instance, secret=SECRET)


def test_a_blanked_rejection_does_not_let_the_deadline_approve(instance: DagsterInstance, requests: Path) -> None:
    """Blanked rejection: with on_timeout="approve", blanking bo's rejection in a re-execution after the
    deadline still rejects."""
    parked = park(late_mail_job, instance)
    decide(parked, verdict="reject", by="bo", comment="no", instance=instance, secret=SECRET)
    parent = instance.get_run_by_id(parked)
    assert parent is not None
    time.sleep(2.2)  # past the deadline
    again = attack(late_mail_job, instance, parked, {**parent.tags, decision_tag("review", "bo"): "{}"})
    assert not sent(instance, again)
    assert "rejected by bo" in gate_failed(instance, again)


def test_an_unknown_requester_makes_no_decision_count_until_the_deployment_allows_it(
    instance: DagsterInstance, requests: Path
) -> None:
    why = (
        "the requester of run {run} is unknown (no dagster/user tag), so no decision counts while "
        "requester_may_approve=False: set ApprovalSettings(allow_unknown_requester=True) where the deployment does "
        "not set dagster/user, or requester_may_approve=True on the gate"
    )
    parked = park(closed_mail_job, instance)  # Dagster OSS: no dagster/user
    (waiting,) = pending(instance=instance)
    assert waiting.waiting_for == why.format(run=parked)
    with pytest.raises(ApprovalError) as refused:
        decide(parked, verdict="approve", by="ana", instance=instance)
    assert str(refused.value) == f"this decision on gate review of run {parked} would not count: " + why.format(
        run=parked
    )
    # written by hand and re-executed, the gate says so and parks again
    by_hand = bound(waiting, verdict="approve", by="ana")
    again = attack(closed_mail_job, instance, parked, {decision_tag("review", "ana"): by_hand.to_tag()})
    assert not sent(instance, again) and ignored(instance, again) == [why.format(run=parked)]
    # the explicit setting allows it
    allowed = park(open_mail_job, instance)
    decide(allowed, verdict="approve", by="ana", instance=instance)
    done = resume(allowed, job=reconstructable(open_mail_job), instance=instance)
    assert load_final_context(open_mail, done, instance=instance).sent.startswith("sent to victim")  # type: ignore[attr-defined]


def test_names_compare_case_insensitively_after_normalisation(instance: DagsterInstance, requests: Path) -> None:
    parked = park(mail_job, instance, user="ana")
    for variant in ("Ana", " ANA ", "\uff21na"):  # a fullwidth A is an A after NFKC
        with pytest.raises(ApprovalError, match="launched the run and may not decide on it"):
            decide(parked, verdict="approve", by=variant, instance=instance, secret=SECRET)
    decide(parked, verdict="approve", by="Bo", instance=instance, secret=SECRET)  # an approver, as named
    done = resume(parked, job=reconstructable(mail_job), instance=instance, secret=SECRET)
    assert sent(instance, done)


def test_a_re_execution_with_other_inputs_makes_its_launcher_the_requester(
    instance: DagsterInstance, requests: Path
) -> None:
    """A run naming someone else's run as its parent, with other inputs, does not make that someone the
    requester: ana may not approve the run she launched that way."""
    victim = park(mail_job, instance, user="bo")
    own = attack(mail_job, instance, victim, {"dagster/user": "ana"}, recipient=ATTACKER)
    with pytest.raises(ApprovalError, match="'ana' launched the run and may not decide on it"):
        decide(own, verdict="approve", by="ana", instance=instance, secret=SECRET)


def test_a_signature_shows_in_no_log_and_no_audit_event(instance: DagsterInstance, requests: Path) -> None:
    """Signed where the secret is (`flujo-dagster sign`), recorded from the Launchpad's `flujo_decide` job: the
    job's log and the audit trail never show the signature (the event keeps its SHA-256, which the gate
    verifies), and the decision counts."""
    parked = park(mail_job, instance)
    _, _, made = prepare_decision(parked, verdict="approve", by="ana", instance=instance, secret=SECRET)
    config = {"run_id": parked, "decision": "approve", "by": "ana", "at": made.at, "signature": made.signature}
    job = forgery_defs.resolve_job_def("flujo_decide")
    result = job.execute_in_process(run_config={"ops": {"flujo_decide": {"config": config}}}, instance=instance)
    assert result.success
    assert all(made.signature not in str(entry) for entry in instance.all_logs(result.run_id))
    assert all(made.signature not in str(entry) for entry in instance.all_logs(parked))
    (event,) = [e for e in run_audit(instance, parked) if e.kind == "decision"]
    assert event.record["record"]["signature_sha256"] == hashlib.sha256(made.signature.encode()).hexdigest()
    done = resume(parked, job=reconstructable(mail_job), instance=instance, secret=SECRET)
    assert sent(instance, done)


def test_a_re_execution_that_never_ran_the_gate_neither_jams_the_resume_nor_parks(
    instance: DagsterInstance, requests: Path
) -> None:
    """Jamming: a re-execution of the parked run, same inputs, of a step before the gate only, inherits the
    parked run's tags (parked, awaiting, the decision) but never runs the gate. It is not listed as parked, it
    cannot be resumed, and it does not count as the parked run's resume: the approved run still resumes once."""
    victim = park(mail_job, instance)
    decide(victim, verdict="approve", by="ana", instance=instance, secret=SECRET)
    parked_tags = instance.get_run_by_id(victim).tags  # type: ignore[union-attr]
    options = ReexecutionOptions(parent_run_id=victim, step_selection=["write"])
    with execute_job(
        reconstructable(mail_job), instance=instance, reexecution_options=options, tags=dict(parked_tags)
    ) as r:
        ghost = r.run_id
    assert instance.get_run_by_id(ghost).tags["flujo/parked"] == "true"  # type: ignore[union-attr]
    assert [p.run_id for p in pending(instance=instance, secret=SECRET)] == [victim]
    assert [p.run_id for p in resumable(instance, secret=SECRET)] == [victim]
    with pytest.raises(
        ApprovalError,
        match=f"no gate parked in run {ghost} \\(status SUCCESS; its parked tags were inherited from run {victim}\\)",
    ):
        resume(ghost, job=reconstructable(mail_job), instance=instance, secret=SECRET)
    resumed = resume(victim, job=reconstructable(mail_job), instance=instance, secret=SECRET)
    assert resumed != ghost and sent(instance, resumed)
    assert resume(victim, job=reconstructable(mail_job), instance=instance, secret=SECRET) == resumed


def test_a_rejection_on_a_later_re_execution_is_final_for_the_run_it_re_executed(
    instance: DagsterInstance, requests: Path
) -> None:
    """A rejection anywhere in the chain is final: bo rejects on a re-execution of the parked run (which parked
    again at the gate); past the deadline of `on_timeout="approve"`, neither the parked run nor a later
    re-execution of it sends, and nothing is offered for resumption."""
    parked = park(late_mail_job, instance)
    again = attack(late_mail_job, instance, parked, {})  # runs the gate again: parks there
    assert sorted(p.run_id for p in pending(instance=instance, secret=SECRET)) == sorted([parked, again])
    decide(again, verdict="reject", by="bo", comment="no", instance=instance, secret=SECRET)
    rejected = resume(again, job=reconstructable(late_mail_job), instance=instance, secret=SECRET)
    assert not sent(instance, rejected) and "rejected by bo" in gate_failed(instance, rejected)
    time.sleep(2.2)  # past the deadline that would approve
    offered = resumable(instance, secret=SECRET)
    assert parked not in [p.run_id for p in offered]
    assert all("approve" not in p.tags.get("flujo/resumed_because", "") for p in offered)
    sibling = attack(late_mail_job, instance, parked, {})  # a fresh re-execution of the parked run
    assert not sent(instance, sibling) and "rejected by bo" in gate_failed(instance, sibling)
