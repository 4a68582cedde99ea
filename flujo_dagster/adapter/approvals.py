"""Deciding on parked runs and resuming them, from Python (the CLI calls these): `pending`, `decide`, `resume`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, ReexecutionOptions, RunsFilter, execute_job

from flujo_dagster.adapter.approval_ops import NO_RUN_RETRY_TAG, PARKED_TAG, RETRY_BEFORE_PARK_TAG
from flujo_dagster.errors import ApprovalError
from flujo_dagster.runtime.approvals import (
    AWAITING_PREFIX,
    DECISION_PREFIX,
    REQUEST_PREFIX,
    Decision,
    Verdict,
    parse_decision,
)

if TYPE_CHECKING:  # what `dagster.reconstructable(...)` returns; not exported by name
    from dagster._core.definitions.reconstruct import ReconstructableJob

__all__ = ["PendingApproval", "Resumable", "decide", "pending", "resumable", "resume", "resume_plan"]

RESUME_KEY_TAG = "flujo/resume_key"
PARENT_TAG, ROOT_TAG = "dagster/parent_run_id", "dagster/root_run_id"


@dataclass(frozen=True)
class PendingApproval:
    """A gate a run is parked at: the run, the gate (its op), the step path, the payload hash, who may decide."""

    run_id: str
    gate: str
    path: str
    payload_hash: str
    approvers: tuple[str, ...] | None


def _requests(tags: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The parked gates of a run (tags `flujo/awaiting/<gate>=pending`) and their recorded requests."""
    found = {}
    for key, value in tags.items():
        if key.startswith(AWAITING_PREFIX) and value == "pending":
            gate = key.removeprefix(AWAITING_PREFIX)
            found[gate] = json.loads(tags.get(REQUEST_PREFIX + gate, "{}"))
    return found


def pending(instance: DagsterInstance) -> list[PendingApproval]:
    """Every gate a run of `instance` is parked at, newest run first."""
    runs = instance.get_runs(
        filters=RunsFilter(tags={PARKED_TAG: "true"}, statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])
    )
    found = []
    for run in runs:
        for gate, request in _requests(dict(run.tags)).items():
            approvers = request.get("approvers")
            found.append(
                PendingApproval(
                    run_id=run.run_id,
                    gate=gate,
                    path=str(request.get("path", gate)),
                    payload_hash=str(request.get("payload_hash", "")),
                    approvers=tuple(approvers) if approvers is not None else None,
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
    values: dict[str, Any] | None = None,
) -> Decision:
    """Record a decision on the gate `gate` (the only parked one when None) of parked run `run_id`, as the run
    tag `flujo/decision/<gate>`, bound to the payload hash the gate recorded. Raises `ApprovalError` when the
    run is not parked there. Does not resume the run (the `flujo_approvals` sensor or `resume` does)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ApprovalError(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})")
    requests = _requests(dict(run.tags))
    if gate is None:
        if len(requests) != 1:
            raise ApprovalError(
                f"run {run_id} is parked at {len(requests)} gates ({', '.join(sorted(requests)) or 'none'}); "
                "name one with gate=..."
            )
        (gate,) = requests
    if gate not in requests:
        raise ApprovalError(
            f"run {run_id} is not parked at gate {gate!r}; parked at: {', '.join(sorted(requests)) or 'no gate'}"
        )
    decision = Decision(
        verdict=verdict,
        by=by,
        payload_hash=str(requests[gate].get("payload_hash", "")),
        comment=comment,
        values=dict(values or {}),
    )
    instance.add_run_tags(run_id, {DECISION_PREFIX + gate: decision.to_tag()})
    return decision


@dataclass(frozen=True)
class Resumable:
    """A parked run with a decision for at least one of its gates: the tags its resume carries, and the tags
    that mark the parked run's decided gates as resumed."""

    run_id: str
    gates: tuple[str, ...]
    tags: dict[str, str]
    superseded: dict[str, str]


def resume_plan(run: DagsterRun, instance: DagsterInstance) -> Resumable | None:
    """How to resume `run`, or None when no gate it is parked at has a decision for the content it showed, or
    when a resume with the same decisions was already launched in its chain (exactly once: a decision written
    twice, a sensor ticking twice, or a decision the gate then ignores, resume at most once)."""
    decisions = {k: v for k, v in run.tags.items() if k.startswith(DECISION_PREFIX)}
    decided = []
    for gate, request in _requests(dict(run.tags)).items():
        raw = decisions.get(DECISION_PREFIX + gate)
        parsed = parse_decision(raw) if raw is not None else None  # malformed: not resumable (the gate says why)
        if isinstance(parsed, Decision) and parsed.payload_hash == request.get("payload_hash"):
            decided.append(gate)
    if not decided:
        return None
    root = run.root_run_id or run.run_id
    key = hashlib.sha256(json.dumps([root, sorted(decisions.items())]).encode()).hexdigest()
    superseded = {AWAITING_PREFIX + g: "resumed" for g in decided}
    if run.tags.get(RESUME_KEY_TAG) == key:
        return None  # this run was the resume for these decisions and parked again: it needs a new decision
    same_key = instance.get_runs(filters=RunsFilter(tags={RESUME_KEY_TAG: key}), limit=1)
    if same_key or instance.get_runs(filters=RunsFilter(tags={PARENT_TAG: run.run_id}), limit=1):
        # already resumed: by us, or re-executed from the UI (with the decision tag added by hand)
        instance.add_run_tags(run.run_id, superseded)
        return None
    return Resumable(
        run_id=run.run_id,
        gates=tuple(decided),
        # a resume launched through GraphQL inherits the parent's tags: its awaiting and parked tags are superseded
        tags={
            **decisions,
            **superseded,
            PARKED_TAG: "false",
            # Dagster's automatic run retries were turned off only while parked
            NO_RUN_RETRY_TAG: run.tags.get(RETRY_BEFORE_PARK_TAG, "true"),
            RESUME_KEY_TAG: key,
            PARENT_TAG: run.run_id,
            ROOT_TAG: root,
        },
        superseded=superseded,
    )


def resumable(instance: DagsterInstance) -> list[Resumable]:
    """Every parked run of `instance` that a recorded decision lets resume (see `resume_plan`)."""
    runs = instance.get_runs(
        filters=RunsFilter(tags={PARKED_TAG: "true"}, statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])
    )
    plans = [resume_plan(run, instance) for run in runs]
    return [p for p in plans if p is not None]


def resume(run_id: str, *, job: ReconstructableJob, instance: DagsterInstance) -> str:
    """Re-execute parked run `run_id` from failure with every decision so far (where no webserver runs to
    launch it through GraphQL; `execute_job` inherits no tags, so they are passed). Exactly once per set of
    decisions: a second call returns the first resume's run id. Returns the resumed run's id."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ApprovalError(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})")
    plan = resume_plan(run, instance)
    if plan is None:
        decisions = sorted((k, v) for k, v in run.tags.items() if k.startswith(DECISION_PREFIX))
        key = hashlib.sha256(json.dumps([run.root_run_id or run_id, decisions]).encode()).hexdigest()
        earlier = instance.get_runs(filters=RunsFilter(tags={RESUME_KEY_TAG: key}), limit=1) or instance.get_runs(
            filters=RunsFilter(tags={PARENT_TAG: run_id}), limit=1
        )
        if earlier:
            return earlier[0].run_id
        raise ApprovalError(f"run {run_id} has no decision for the gates it is parked at; decide first")
    options = ReexecutionOptions.from_failure(run_id, instance)
    # execute_job inherits no tag: carry the parent's (who launched it, its partition or scheduled time...) as a
    # re-execution from the UI would, with the resume's own on top
    tags = {**run.tags, **plan.tags}
    with execute_job(job, instance=instance, reexecution_options=options, tags=tags, raise_on_error=False) as result:
        resumed = result.run_id
    instance.add_run_tags(run_id, plan.superseded)
    return resumed
