"""Launching a decided parked run's resume: at once, from where the decision was made (the inbox, the CLI), or at
the `flujo_approvals` sensor's next tick (the fallback). Both launch through the webserver's GraphQL API. Two launchers
racing for the same decisions may both launch a resume; only the first launched goes past its gate
(`first_resume`)."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRun, RunsFilter

from flujo_dagster.adapter.control.approvals import PARENT_TAG, Report, Resumable, record_resume, resume_plan
from flujo_dagster.adapter.control.chain import live_resume, resumed_gates, same_run
from flujo_dagster.adapter.control.graphql import Webserver, launch_reexecution
from flujo_dagster.adapter.control.resume_steps import resume_step_keys
from flujo_dagster.adapter.control.routes import how_to_resume, report_unresumable, route
from flujo_dagster.errors import ApprovalError
from flujo_dagster.names import APPROVALS_SENSOR, PARKED_TAG, RESUME_KEY_TAG, RESUMED_BY_TAG

__all__ = ["ResumeOutcome", "first_resume", "launch_resume", "resume_now"]

_MAX_SAME_KEY = 20  # the oldest runs read that carry one resume key


def first_resume(instance: DagsterInstance, run: DagsterRun) -> DagsterRun | None:
    """For a resume launched by flujo (`flujo/resume_key`), the first run launched as the same resume when it is
    not `run` itself: two launchers racing for the same decisions (the inbox or the CLI, and the sensor's tick)
    can both launch one, and only the first may go on (`ops/approval.py` stops the other before its gate). A run
    counts as the same resume when it names the same parent, is of the same job with the same inputs and runs the
    same steps (an impostor that named the parent with other steps or inputs does not), and that is still running
    or went past its gates (one cancelled or failed before them does not: `live_resume`)."""
    key = run.tags.get(RESUME_KEY_TAG)
    parent = instance.get_run_by_id(run.parent_run_id) if key is not None and run.parent_run_id else None
    if parent is None or key is None:
        return None
    gates = resumed_gates(parent)
    records = instance.get_run_records(
        filters=RunsFilter(tags={RESUME_KEY_TAG: key}), limit=_MAX_SAME_KEY, order_by="id", ascending=True
    )
    same = [
        r
        for r in records
        if r.dagster_run.parent_run_id == run.parent_run_id
        and r.dagster_run.job_name == run.job_name
        and same_run(r.dagster_run, run)
        and sorted(r.dagster_run.step_keys_to_execute or []) == sorted(run.step_keys_to_execute or [])
        and (r.dagster_run.run_id == run.run_id or live_resume(r.dagster_run, gates))
    ]
    if not same or same[0].dagster_run.run_id == run.run_id:
        return None
    return same[0].dagster_run


def launch_resume(
    instance: DagsterInstance, server: Webserver, parent: DagsterRun, plan: Resumable, tags: dict[str, str]
) -> DagsterRun:
    """Launch the resume of `parent` (`plan`, with `tags` added) through the webserver, and record it on `parent`.
    `ApprovalError` (redacted) when the launch failed or cannot be confirmed."""
    steps = resume_step_keys(instance, parent)  # None: parked the old way (FAILURE), from failure
    launched = launch_reexecution(server, parent, {**plan.tags, **tags}, instance=instance, step_keys=steps)
    record_resume(instance, parent, plan, launched.run_id)
    return launched


@dataclass(frozen=True)
class ResumeOutcome:
    """What became of a decided run's resume: the run that resumes it (launched now, or earlier), one sentence for
    the reviewer, and whether this call launched it."""

    resumed_run_id: str | None
    message: str
    launched: bool = False


def _not_resumable(instance: DagsterInstance, run: DagsterRun) -> ResumeOutcome:
    """Why `run` has nothing to resume now: still waiting (more decisions needed) or resumed already (naming the
    newest re-execution of it)."""
    current = instance.get_run_by_id(run.run_id) or run
    if current.tags.get(PARKED_TAG) == "true":
        return ResumeOutcome(None, f"run {run.run_id} still waits: no gate of it is decided yet (more decisions?)")
    named = instance.get_runs(filters=RunsFilter(tags={PARENT_TAG: run.run_id}), limit=10)
    children = [r for r in named if r.parent_run_id == run.run_id][:1]  # newest first
    if children:
        return ResumeOutcome(children[0].run_id, f"run {run.run_id} was resumed as run {children[0].run_id}")
    return ResumeOutcome(None, f"run {run.run_id} has nothing to resume (it is not parked)")


def resume_now(
    instance: DagsterInstance,
    run_id: str,
    *,
    server: Webserver,
    secret: str | None,
    resumed_by: str,
    report: Report | None = None,
) -> ResumeOutcome:
    """Resume parked run `run_id` at once if a decision lets it (as the `flujo_approvals` sensor would at its next
    tick: same plan, same checks, exactly once), tagged `flujo/resumed_by=resumed_by`. Never raises for a resume
    that cannot be launched now: the outcome says why, and the sensor stays the fallback. A run parked outside a
    code location is not launched: the outcome gives the command that resumes it."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return ResumeOutcome(None, f"run {run_id} is not in this Dagster instance ({instance.root_directory})")
    plan = resume_plan(run, instance, secret=secret, report=report)
    if plan is None:
        return _not_resumable(instance, run)
    if route(run) == "in_process":
        report_unresumable(instance, run, plan)
        return ResumeOutcome(None, how_to_resume(run))
    try:
        launched = launch_resume(instance, server, run, plan, {RESUMED_BY_TAG: resumed_by[:200]})
    except ApprovalError as exc:  # the decision stands; the sensor launches the resume at its next tick
        return ResumeOutcome(
            None,
            f"the decision is recorded, but its resume could not be launched now ({exc}); the {APPROVALS_SENSOR} "
            "sensor resumes the run at its next tick",
        )
    first = first_resume(instance, launched)
    if first is not None:  # another launcher's resume came first: this one stops before its gate
        return ResumeOutcome(
            first.run_id,
            f"resumed run {run_id} as run {first.run_id} (run {launched.run_id}, launched at the same time, stops "
            "before its gate)",
        )
    return ResumeOutcome(launched.run_id, f"resumed run {run_id} as run {launched.run_id}", launched=True)
