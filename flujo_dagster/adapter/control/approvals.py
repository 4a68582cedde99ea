"""Deciding on parked runs and resuming them, from Python (the CLI calls these): `pending`, `decide`, `resume`;
`escalate_due` for gates whose deadline escalates them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunNotFoundError,
    DagsterRunStatus,
    ReexecutionOptions,
    RunsFilter,
    execute_job,
)

from flujo_dagster.adapter.control.audit import audit, record_ignored
from flujo_dagster.adapter.control.chain import chain_of_run, chain_runs, live_resume, proven_root, same_run
from flujo_dagster.adapter.control.evidence import evidence
from flujo_dagster.adapter.control.resume_steps import resume_step_keys
from flujo_dagster.config import DECISION_SECRET_ENV, decision_secret
from flujo_dagster.errors import ApprovalError, StorageError
from flujo_dagster.names import (
    AWAITING_PREFIX,
    DECISION_PREFIX,
    ESCALATED_PREFIX,
    NO_RUN_RETRY_TAG,
    PARKED_RUN_TAG,
    PARKED_TAG,
    REQUEST_PREFIX,
    RESUME_KEY_TAG,
    RESUMED_BECAUSE_TAG,
    RESUMED_BY_TAG,
    RETRY_BEFORE_PARK_TAG,
    decision_gate,
    decision_tag,
)
from flujo_dagster.runtime.approvals import (
    TIMEOUT_BY,
    Decision,
    Request,
    Verdict,
    check_decision,
    decision_record,
    sign,
    tally,
)
from flujo_dagster.runtime.tags import cut, tag_key_problem

if TYPE_CHECKING:  # what `dagster.reconstructable(...)` returns; not exported by name
    from dagster._core.definitions.reconstruct import ReconstructableJob

__all__ = [
    "PER_RUN_ERRORS",
    "PendingApproval",
    "Report",
    "Resumable",
    "decide",
    "escalate_due",
    "gates_waiting",
    "parked_runs",
    "pending",
    "prepare_decision",
    "record_resume",
    "resumed_instead",
    "resumable",
    "resume",
    "resume_plan",
]

PARENT_TAG, ROOT_TAG = "dagster/parent_run_id", "dagster/root_run_id"
T = TypeVar("T")
_BECAUSE_CHARS = 1000


@dataclass(frozen=True)
class PendingApproval:
    """A gate a run is parked at: the run, the gate (its op, plus `[<mapping key>]` in a Map), the step path,
    the payload hash, who may decide now, how many approvals it still needs, its deadline (if any), a preview
    and the state hash a decision is bound to with the rest."""

    run_id: str
    gate: str
    path: str
    payload_hash: str
    approvers: tuple[str, ...] | None
    waiting_for: str = ""
    deadline: str = ""
    preview: str = ""
    problem: str = ""
    """Why the gate's request cannot be read (then nothing else is known, and no decision counts for it)."""
    state_hash: str = ""


Report = Callable[[str], None]
"""Where a problem with one run is reported (a sensor's log, a list): the others are handled regardless."""
PER_RUN_ERRORS = (ApprovalError, StorageError, DagsterRunNotFoundError)
"""What handling one parked run may still raise (a run deleted meanwhile, a chain that cannot be read): reported
for that run, never stopping the others. Every tag is read by a total function, so a malformed one is not here."""


def _request(tags: Mapping[str, str], gate: str) -> Request | str:
    """The request of parked gate `gate`, or why it cannot be read (never raises)."""
    problem = tag_key_problem(AWAITING_PREFIX + gate)
    if problem is not None:
        return problem
    if REQUEST_PREFIX + gate not in tags:
        return f"the run has no tag {REQUEST_PREFIX + gate}"
    request = Request.from_tag(tags[REQUEST_PREFIX + gate], gate=gate)
    return request if isinstance(request, Request) else f"tag {REQUEST_PREFIX + gate}: {request}"


def _requests(tags: Mapping[str, str]) -> dict[str, Request | str]:
    """The parked gates of a run (tags `flujo/awaiting/<gate>=pending`) and their recorded requests, or why one
    cannot be read (a gate whose request cannot be read is never decided)."""
    gates = [
        k.removeprefix(AWAITING_PREFIX) for k, v in tags.items() if k.startswith(AWAITING_PREFIX) and v == "pending"
    ]
    return {gate: _request(tags, gate) for gate in gates}


def _unreadable(run: DagsterRun, gate: str, problem: str) -> str:
    """What to tell about a parked gate whose request cannot be read."""
    return (
        f"gate {cut(gate, 80)} of run {run.run_id} cannot be decided: its request cannot be read ({problem}); "
        "no decision counts for it until the gate runs again and records its request anew (re-execute the run "
        "from the gate's step)"
    )


def _each_run(runs: Collection[DagsterRun], handle: Callable[[DagsterRun], list[T]], report: Report | None) -> list[T]:
    """`handle` of every run, in order; a run it cannot handle (`PER_RUN_ERRORS`) is reported and skipped."""
    found: list[T] = []
    for run in runs:
        try:
            found.extend(handle(run))
        except PER_RUN_ERRORS as exc:
            if report is not None:
                report(f"run {run.run_id} was skipped: {exc}")
    return found


def parked_runs(instance: DagsterInstance, *, jobs: Collection[str] | None = None) -> list[DagsterRun]:
    """The runs of `instance` (of `jobs`, when given) parked at a gate, newest first: finished SUCCESS (a park
    is not a failure), or FAILURE (parked before parks stopped failing the run, or another step failed), and
    tagged `flujo/parked=true` (a resume sets it back to false). A run someone cancelled, or one still running,
    is not parked: it is never resumed."""
    statuses = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]
    runs = instance.get_runs(filters=RunsFilter(tags={PARKED_TAG: "true"}, statuses=statuses))
    return [r for r in runs if (jobs is None or r.job_name in jobs) and _parked_here(r)]


def _parked_here(run: DagsterRun) -> bool:
    """Whether a gate parked in `run` itself (`flujo/parked_run` names it), not in a run whose tags it inherited
    (a re-execution of a parked run that never ran the gate); a run parked the old way (FAILURE, before the tag
    existed) counts by its status."""
    recorded = run.tags.get(PARKED_RUN_TAG)
    return recorded == run.run_id or (recorded is None and run.status == DagsterRunStatus.FAILURE)


def pending(
    *,
    instance: DagsterInstance,
    now: datetime | None = None,
    secret: str | None = None,
    report: Report | None = None,
) -> list[PendingApproval]:
    """Every gate a run of `instance` is parked at, newest run first (signed decisions are counted when the
    `secret` is given). A gate whose request cannot be read is listed with its `problem`; a run that cannot be
    read at all is told to `report` and left out. One run never keeps the others from being listed."""
    moment = now or datetime.now(UTC)
    return _each_run(parked_runs(instance), partial(_pending_of, instance, moment, secret), report)


def gates_waiting(
    instance: DagsterInstance, run: DagsterRun, *, now: datetime | None = None, secret: str | None = None
) -> list[PendingApproval]:
    """Every gate `run` waits at (its tags `flujo/awaiting/<gate>=pending`), as `pending` lists them."""
    return _pending_of(instance, now or datetime.now(UTC), secret, run)


def _pending_of(instance: DagsterInstance, now: datetime, secret: str | None, run: DagsterRun) -> list[PendingApproval]:
    """The gates `run` is parked at (see `pending`)."""
    found = []
    requests = _requests(dict(run.tags))
    gathered = evidence(instance, run, [g for g, r in requests.items() if isinstance(r, Request)])
    for gate, request in requests.items():
        if isinstance(request, str):
            found.append(
                PendingApproval(run.run_id, gate, "", "", approvers=(), problem=_unreadable(run, gate, request))
            )
            continue
        outcome = tally(
            gathered[gate].records,
            request,
            binding=gathered[gate].binding,
            requester=gathered[gate].requester,
            now=now,
            secret=secret,
            validate_edits=False,
            verify_signature=secret is not None,
        )
        deadlines = request.deadlines()
        found.append(
            PendingApproval(
                run_id=run.run_id,
                gate=gate,
                path=request.path,
                payload_hash=request.payload_hash,
                approvers=request.policy.allowed(escalated=outcome.stage != "open"),
                waiting_for=outcome.waiting_for,
                deadline=deadlines[0].isoformat(timespec="seconds") if deadlines else "",
                preview=request.preview,
                state_hash=request.state_hash,
            )
        )
    return found


def decide(
    run_id: str,
    *,
    verdict: Verdict,
    by: str,
    instance: DagsterInstance,
    gate: str | None = None,
    comment: str = "",
    values: Mapping[str, object] | None = None,
    secret: str | None = None,
    at: str | None = None,
    signature: str | None = None,
    identity: str = "",
) -> Decision:
    """Record a decision on the gate `gate` (the only parked one when None) of parked run `run_id`, as the run
    tag `flujo/decision/<gate>/<by>` (one per reviewer) and as an audit event holding the full record, bound to
    the run state the gate recorded (this run, the gate, its step path, the payload and state hashes). With
    `secret` the record is signed (HMAC) over all of them; `signature` (with its `at`) passes one made
    elsewhere (`flujo-dagster sign`); `identity` says how the reviewer's name was established (the inbox's
    `header X-Forwarded-User` or `self-declared`). Raises `ApprovalError` when the run is not parked
    there, or when the decision would not count (the reason). Does not resume the run (the `flujo_approvals`
    sensor or `resume` does)."""
    run, gate, decision = prepare_decision(
        run_id,
        verdict=verdict,
        by=by,
        instance=instance,
        gate=gate,
        comment=comment,
        values=values,
        secret=secret,
        at=at,
        signature=signature,
        identity=identity,
    )
    key = decision_tag(gate, decision.by)  # one tag per reviewer: a rejection is never overwritten
    instance.add_run_tags(run_id, {key: decision.to_tag()})
    how = f" ({decision.identity})" if decision.identity else ""
    message = f"{verdict} by {decision.by}{how} recorded in tag {key}"
    signed = bool(decision.signature)
    # the full record, appended to the event log (which no re-execution's tags can rewrite); the signature only
    # as its SHA-256, enough for the gate to verify it and useless to a reader
    audit(
        instance,
        run,
        "decision",
        gate,
        message,
        verdict=verdict,
        by=decision.by,
        comment=comment,
        tag=key,
        signed=signed,
        record=decision.to_event(),
        **({"identity": decision.identity} if decision.identity else {}),
    )
    return decision


def prepare_decision(
    run_id: str,
    *,
    verdict: Verdict,
    by: str,
    instance: DagsterInstance,
    gate: str | None = None,
    comment: str = "",
    values: Mapping[str, object] | None = None,
    secret: str | None = None,
    at: str | None = None,
    signature: str | None = None,
    identity: str = "",
) -> tuple[DagsterRun, str, Decision]:
    """The parked run, the gate and the (signed) decision record `decide` would write, bound to the run state
    the gate recorded and checked as the gate would check it; `ApprovalError` says why it would not count."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ApprovalError(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})")
    requests = _requests(dict(run.tags))
    gate = _parked_gate(instance, run, gate, requests)
    if verdict == "reject" and values:
        raise ApprovalError("a rejection edits nothing: drop the edited values (--set) or approve")
    request = requests[gate]
    if isinstance(request, str):
        raise ApprovalError(_unreadable(run, gate, request))
    decision = decision_record(
        verdict=verdict,
        by=by,
        payload_hash=request.payload_hash,
        comment=comment,
        values=values,
        at=at,
        signature=signature or "",
        bound={"run_id": run.run_id, "gate": gate, "path": request.path, "state_hash": request.state_hash},
        identity=identity,
    )
    if not signature and secret is not None:
        decision = sign(decision, secret=secret)
    elif not signature and request.policy.signed:
        raise ApprovalError(
            f"gate {gate} of run {run_id} requires signed decisions: set {DECISION_SECRET_ENV} to the approvers' "
            "secret (the CLI reads it from there) or pass secret=..."
        )
    _refuse_unless_counted(instance, run, gate, request, decision, secret)
    return run, gate, decision


def _refuse_unless_counted(
    instance: DagsterInstance, run: DagsterRun, gate: str, request: Request, decision: Decision, secret: str | None
) -> None:
    """`ApprovalError` when `decision` would not count at the gate, or could change nothing (a reviewer's
    rejection already counted is final)."""
    found = evidence(instance, run, [gate])[gate]
    check = partial(
        check_decision,
        request=request,
        binding=found.binding,
        requester=found.requester,
        escalated=request.stage(datetime.now(UTC)) != "open",
        secret=secret,
        validate_edits=False,  # the gate validates edits against its decision model
        verify_signature=secret is not None,  # a signature made elsewhere: the gate checks it
    )
    refused = check(decision.to_tag())
    if isinstance(refused, str):
        raise ApprovalError(f"this decision on gate {gate} of run {run.run_id} would not count: {refused}")
    earlier = [check(raw) for _, raw in found.records]
    final = [d for d in earlier if isinstance(d, Decision) and d.verdict == "reject" and d.by != TIMEOUT_BY]
    if final and decision.verdict == "approve":
        raise ApprovalError(
            f"this decision on gate {gate} of run {run.run_id} would not count: {final[0].by} rejected it at "
            f"{final[0].at}, and a rejection is final"
        )


def _parked_gate(
    instance: DagsterInstance, run: DagsterRun, gate: str | None, requests: Mapping[str, Request | str]
) -> str:
    """`gate`, or the only gate `run` is parked at; `ApprovalError` when the run does not wait there (naming the
    run to decide on instead when it was resumed)."""
    if gate is None:
        if len(requests) != 1:
            resumed = resumed_instead(instance, run, None) if not requests else None
            raise ApprovalError(
                resumed
                or f"run {run.run_id} is parked at {len(requests)} gates ({', '.join(sorted(requests)) or 'none'}); "
                "name one with gate=..."
            )
        (gate,) = requests
    if gate not in requests:
        resumed = resumed_instead(instance, run, gate)
        raise ApprovalError(
            resumed
            or f"run {run.run_id} is not parked at gate {gate!r}; parked at: {', '.join(sorted(requests)) or 'no gate'}"
        )
    return gate


def resumed_instead(instance: DagsterInstance, run: DagsterRun, gate: str | None) -> str | None:
    """When `run` was resumed at `gate` (None: at any gate), why not to decide on it and which run to decide on:
    the newest run resuming it (its proven descendants with its inputs) still parked at that gate, else its
    latest resume. None when the gate was not resumed in `run`."""
    gates = [
        k.removeprefix(AWAITING_PREFIX)
        for k, v in run.tags.items()
        if k.startswith(AWAITING_PREFIX) and v == "resumed" and (gate is None or k == AWAITING_PREFIX + gate)
    ]
    if not gates:
        return None
    later = _descendants(instance, run)
    named = cut(", ".join(sorted(gates)), 200)
    if not later:
        return f"run {run.run_id} was already resumed at gate {named}, but no run resuming it is in this instance"
    for child in reversed(later):  # newest first
        parked = sorted(g for g in gates if child.tags.get(AWAITING_PREFIX + g) == "pending")
        if parked and child.tags.get(PARKED_TAG) == "true" and _parked_here(child):
            where = cut(", ".join(parked), 200)
            return (
                f"run {run.run_id} was already resumed as run {child.run_id}, which is parked at gate {where}: "
                f"decide on {child.run_id}"
            )
    latest = later[-1]
    return (
        f"run {run.run_id} was already resumed (gate {named}) as run {latest.run_id}, which is not parked at it "
        f"(status {latest.status.value}); see flujo-dagster audit {run.run_id}"
    )


def _descendants(instance: DagsterInstance, run: DagsterRun) -> list[DagsterRun]:
    """The runs of `run`'s proven chain descending from it with its inputs (its resumes, their resumes...), oldest
    first."""
    found: list[DagsterRun] = []
    ancestors = {run.run_id}
    for other in chain_of_run(instance, run):  # oldest first: a parent comes before its children
        if other.parent_run_id in ancestors and same_run(other, run):
            found.append(other)
            ancestors.add(other.run_id)
    return found


@dataclass(frozen=True)
class Resumable:
    """A parked run with a decision for at least one of its gates: the tags its resume carries, the tags that
    mark the parked run's decided gates as resumed, and the decisions that caused it (`<gate>: <verdict> by
    <who>`)."""

    run_id: str
    gates: tuple[str, ...]
    tags: dict[str, str]
    superseded: dict[str, str]
    because: tuple[str, ...] = ()


def _children(instance: DagsterInstance, run: DagsterRun) -> list[DagsterRun]:
    """The runs re-executing `run` with its inputs (naming it as their parent, which the instance proves), oldest
    first."""
    return [r for r in chain_runs(instance, run.run_id) if r.parent_run_id == run.run_id and same_run(r, run)]


def _resumed_by_hand(instance: DagsterInstance, run: DagsterRun, gates: list[str]) -> list[DagsterRun] | None:
    """The re-executions of `run` (parent proven by the instance, same inputs) that ran its `gates` again (one
    marked itself decided there, or a gate parked in that run itself, resumed since or not): its resumes. A
    re-execution that never ran a gate is not one (anyone can launch one naming any parent); None while such a
    re-execution is still running."""
    found = []
    for child in _children(instance, run):
        ran = child.tags.get(PARKED_RUN_TAG) == child.run_id or any(
            child.tags.get(AWAITING_PREFIX + g) == "decided" for g in gates
        )
        if ran:
            found.append(child)
        elif not child.is_finished:
            return None
    return found


def _already_resumed(
    instance: DagsterInstance, run: DagsterRun, key: str, decided: list[str], superseded: dict[str, str]
) -> bool:
    """Whether `run` was resumed for these decisions already (by us: a run with resume key `key`; or by hand: a
    re-execution that ran its gates), or may be by a re-execution still running; a resumed run is marked so."""
    # a run with this resume key counts only as a re-execution of `run` with its inputs (anyone can launch a run
    # that names `run` as its parent and carries any tag)
    named = instance.get_runs(filters=RunsFilter(tags={RESUME_KEY_TAG: key}), limit=_MAX_SAME_KEY)
    same_key = [
        r
        for r in named
        if r.parent_run_id == run.run_id and r.job_name == run.job_name and same_run(r, run) and live_resume(r, decided)
    ]
    children = _resumed_by_hand(instance, run, decided)
    if not same_key and children is None:
        return True  # a re-execution of it is still running: it may be its resume
    if not same_key and not children:
        return False
    instance.add_run_tags(run.run_id, {**superseded, PARKED_TAG: "false"})
    if children and not same_key:
        by_hand = children[0].run_id
        for gate in decided:
            audit(instance, run, "resume", gate, f"re-executed by hand as run {by_hand}", resumed_run_id=by_hand)
    return True


_MAX_SAME_KEY = 20  # runs read that carry one resume key


def _resume_key(root: str, run: DagsterRun, marks: list[str]) -> str:
    decisions = sorted((k, v) for k, v in run.tags.items() if k.startswith(DECISION_PREFIX))
    return hashlib.sha256(json.dumps([root, decisions, *marks]).encode()).hexdigest()


def resume_plan(
    run: DagsterRun,
    instance: DagsterInstance,
    *,
    secret: str | None = None,
    now: datetime | None = None,
    report: Report | None = None,
) -> Resumable | None:
    """How to resume `run`, or None when no gate it is parked at is decided (a rejection, enough approvals for
    the content it showed, or a deadline that decides), or when a resume with the same decisions was already
    launched in its chain (exactly once: a decision written twice, a sensor ticking twice, or a decision the
    gate then ignores, resume at most once). A gate whose request cannot be read is never decided: it is
    audited once as ignored, and told to `report` then."""
    tags = dict(run.tags)
    moment = now or datetime.now(UTC)
    decided, marks, because = [], [], []
    requests = _requests(tags)
    root = proven_root(instance, run)  # never the root a client named
    found = evidence(instance, run, requests)
    for gate, request in requests.items():
        if isinstance(request, str):
            problem = _unreadable(run, gate, request)
            for _key, reason in record_ignored(instance, run, cut(gate, 80), ((REQUEST_PREFIX + gate, problem),)):
                if report is not None:
                    report(reason)
            continue
        outcome = tally(
            found[gate].records,
            request,
            binding=found[gate].binding,
            requester=found[gate].requester,
            now=moment,
            secret=secret,
            validate_edits=False,
            verify_signature=secret is not None,  # without the secret, the gate checks signatures itself
        )
        record_ignored(instance, run, gate, outcome.ignored)
        if outcome.decision is not None:
            decided.append(gate)
            d = outcome.decision
            marks.append(json.dumps([gate, d.verdict, d.by, d.at, sorted(d.values.items(), key=str)], default=str))
            because.append(f"{gate}: {d.verdict} by {d.by}")
    _unknown_gates(instance, run, requests)
    if not decided:
        return None
    key = _resume_key(root, run, marks)
    # every gate the run is parked at: the resume runs the undecided ones again, and they park there anew
    superseded = {AWAITING_PREFIX + g: "resumed" for g in _requests(tags)}
    if run.tags.get(RESUME_KEY_TAG) == key:
        return None  # this run was the resume for these decisions and parked again: it needs a new decision
    if _already_resumed(instance, run, key, decided, superseded):
        return None
    decisions = {k: v for k, v in tags.items() if k.startswith(DECISION_PREFIX)}
    return Resumable(
        run_id=run.run_id,
        gates=tuple(decided),
        # a resume launched through GraphQL inherits the parent's tags: its awaiting and parked tags are superseded
        tags={
            **decisions,
            **superseded,
            PARKED_TAG: "false",
            # a park of the old kind (it failed the run) turned Dagster's automatic run retries off while parked
            **({NO_RUN_RETRY_TAG: run.tags[RETRY_BEFORE_PARK_TAG]} if RETRY_BEFORE_PARK_TAG in run.tags else {}),
            RESUME_KEY_TAG: key,
            RESUMED_BECAUSE_TAG: "; ".join(because)[:_BECAUSE_CHARS],
            PARENT_TAG: run.run_id,
            ROOT_TAG: root,
        },
        superseded=superseded,
        because=tuple(because),
    )


def _unknown_gates(instance: DagsterInstance, run: DagsterRun, requests: Mapping[str, Request | str]) -> None:
    """Report, once, decision tags for a gate the run never waited at (a typo in a tag written by hand; a gate
    named by an overlong key is reported under its name cut short)."""
    known = {k.removeprefix(AWAITING_PREFIX) for k in run.tags if k.startswith(AWAITING_PREFIX)}
    for key in run.tags:
        gate = decision_gate(key)
        if gate is not None and gate not in known:
            waiting = cut(", ".join(sorted(requests)) or "none", 200)
            reason = f"no gate {cut(gate, 80)!r} waits in this run (gates waiting: {waiting})"
            record_ignored(instance, run, cut(gate, 80), ((key, reason),))


def resumable(
    instance: DagsterInstance,
    *,
    secret: str | None = None,
    now: datetime | None = None,
    jobs: Collection[str] | None = None,
    report: Report | None = None,
) -> list[Resumable]:
    """Every parked run of `instance` (of `jobs`, when given) that a recorded decision (or a deadline) lets
    resume (see `resume_plan`). Each run on its own: a run that cannot be handled is told to `report`."""

    def plan_of(run: DagsterRun) -> list[Resumable]:
        plan = resume_plan(run, instance, secret=secret, now=now, report=report)
        return [plan] if plan is not None else []

    return _each_run(parked_runs(instance, jobs=jobs), plan_of, report)


def escalate_due(
    instance: DagsterInstance,
    *,
    now: datetime | None = None,
    jobs: Collection[str] | None = None,
    report: Report | None = None,
) -> list[tuple[str, str]]:
    """Escalate every parked gate whose deadline passed with `on_timeout="escalate"`: tag the run
    `flujo/escalated/<gate>` and record an escalation event (its approvers widen to `escalate_to` until a second
    deadline, then it rejects). Returns the (run id, gate) pairs escalated now. A gate whose request cannot be
    read is not escalated; a run that cannot be handled is told to `report`, the others are escalated."""
    moment = now or datetime.now(UTC)
    return _each_run(parked_runs(instance, jobs=jobs), partial(_escalate, instance, moment), report)


def _escalate(instance: DagsterInstance, now: datetime, run: DagsterRun) -> list[tuple[str, str]]:
    """Escalate the gates of `run` that are due (see `escalate_due`)."""
    escalated = []
    tags = dict(run.tags)
    for gate, request in _requests(tags).items():
        if isinstance(request, str) or request.stage(now) != "escalated" or ESCALATED_PREFIX + gate in tags:
            continue
        deadlines = request.deadlines()
        assert deadlines is not None
        until = deadlines[1].isoformat(timespec="seconds")
        instance.add_run_tags(run.run_id, {ESCALATED_PREFIX + gate: now.isoformat(timespec="seconds")})
        who = ", ".join(request.policy.escalate_to)
        message = f"no decision by {deadlines[0].isoformat(timespec='seconds')}; escalated to {who} until {until}"
        audit(instance, run, "escalation", gate, message, escalate_to=list(request.policy.escalate_to), until=until)
        escalated.append((run.run_id, gate))
    return escalated


def resume(
    run_id: str,
    *,
    job: ReconstructableJob,
    instance: DagsterInstance,
    secret: str | None = None,
    by: str = "resume()",
) -> str:
    """Re-execute parked run `run_id` with every decision so far (where no webserver runs to launch it through
    GraphQL; `execute_job` inherits no tags, so they are passed): its parked gates and what they held
    (`resume_step_keys`), or, for a run parked the old way (FAILURE), from failure. Exactly once per set of
    decisions: a second call returns the first resume's run id. Returns the resumed run's id. Signed decisions
    are checked with `secret`, by default `FLUJO_DAGSTER_DECISION_SECRET` from the environment. `by` names the
    launcher in the resume's `flujo/resumed_by` tag. `ApprovalError` for an unknown run, a run that is not
    parked, or one whose gates are not decided yet."""
    secret = secret if secret is not None else decision_secret()
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ApprovalError(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})")
    plan = resume_plan(run, instance, secret=secret)
    if plan is None:
        gates = [k.removeprefix(AWAITING_PREFIX) for k in run.tags if k.startswith(AWAITING_PREFIX)]
        earlier = _resumed_by_hand(instance, run, gates) or []  # re-executions that ran a gate: its resumes
        if earlier:
            return earlier[0].run_id  # oldest first: the first resume
        if not _requests(dict(run.tags)):
            raise ApprovalError(
                f"run {run_id} is not parked at an approval gate (status {run.status.value}): nothing to resume"
            )
        waiting = ", ".join(sorted(_requests(dict(run.tags))))
        raise ApprovalError(
            f"run {run_id} has no decision for the gates it is parked at ({waiting}) yet; decide first "
            "(flujo-dagster pending lists what each waits for)"
        )
    keys = resume_step_keys(instance, run)
    options = (
        ReexecutionOptions.from_failure(run_id, instance)
        if keys is None
        else ReexecutionOptions(parent_run_id=run_id, step_selection=keys)
    )
    # execute_job inherits no tag: carry the parent's (who launched it, its partition or scheduled time...) as a
    # re-execution from the UI would, with the resume's own on top
    tags = {**run.tags, **plan.tags, RESUMED_BY_TAG: by}
    with execute_job(job, instance=instance, reexecution_options=options, tags=tags, raise_on_error=False) as result:
        resumed = result.run_id
    record_resume(instance, run, plan, resumed)
    return resumed


def record_resume(instance: DagsterInstance, run: DagsterRun, plan: Resumable, resumed: str) -> None:
    """Mark `run`'s gates as resumed and the run as no longer parked (the Runs filter `flujo/parked=true` lists
    only runs that wait), and record the resume as an audit event on it."""
    instance.add_run_tags(run.run_id, {**plan.superseded, PARKED_TAG: "false"})
    for gate in plan.gates:
        audit(instance, run, "resume", gate, f"resumed as run {resumed}", resumed_run_id=resumed)
