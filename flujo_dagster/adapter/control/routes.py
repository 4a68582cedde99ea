"""How a decided parked run resumes: through the `flujo_approvals` sensor of its code location, or, for a run
parked outside any code location (`flujo-dagster run`, `execute_job`), in process with `flujo-dagster resume`.
What the CLI says about it, and the sensor's report of a run it cannot resume."""

from __future__ import annotations

from typing import Literal

from dagster import DagsterInstance, DagsterRun

from flujo_dagster.adapter.control.approvals import Resumable
from flujo_dagster.adapter.control.audit import audit
from flujo_dagster.names import APPROVALS_SENSOR, RESUME_KEY_TAG, RESUME_NEEDED_TAG

__all__ = ["Route", "how_to_resume", "report_unresumable", "resume_command", "route"]

Route = Literal["sensor", "other_location", "in_process"]


def route(run: DagsterRun, location: str | None = None) -> Route:
    """How `run` can resume, seen from the code location `location` (None: any): `sensor` when it was launched in
    that code location (the webserver can re-execute it), `other_location` when in another one (that location's
    sensor resumes it), `in_process` when it was launched outside any (Dagster recorded no remote job origin:
    `flujo-dagster run`, `execute_job`), so only `flujo-dagster resume` or `resume()` can."""
    origin = run.remote_job_origin
    if origin is None:
        return "in_process"
    if location is not None and origin.location_name != location:
        return "other_location"
    return "sensor"


def resume_command(run: DagsterRun, target: str | None = None) -> str:
    """The command that resumes `run` in process: `flujo-dagster resume RUN_ID`, with the TARGET it was run with
    when Dagster recorded no code origin to load its job from (`flujo-dagster run` records none)."""
    if run.job_code_origin is not None:
        return f"flujo-dagster resume {run.run_id}"
    return f"flujo-dagster resume {run.run_id} {target or 'MODULE:ATTR'}"


def how_to_resume(run: DagsterRun, target: str | None = None) -> str:
    """One sentence saying how `run` resumes once its gate is decided (the CLI prints it after a park and after
    a decision). `target`: the MODULE:ATTR it was run with, when known."""
    origin = run.remote_job_origin
    if origin is not None:
        return f"once decided, the {APPROVALS_SENSOR} sensor of code location {origin.location_name} resumes it"
    given = "" if target is not None or run.job_code_origin is not None else " (MODULE:ATTR: the pipeline it ran)"
    return (
        "it was parked outside a code location, so no sensor resumes it: once decided, run "
        f"`{resume_command(run, target)}`{given}"
    )


def report_unresumable(instance: DagsterInstance, run: DagsterRun, plan: Resumable) -> bool:
    """Record, once per set of decisions, that the sensor cannot resume decided run `run` (parked outside a code
    location) and what to do: an audit event on each decided gate. True when it was recorded now."""
    key = plan.tags.get(RESUME_KEY_TAG, "")
    current = instance.get_run_by_id(run.run_id) or run
    if current.tags.get(RESUME_NEEDED_TAG) == key:
        return False
    instance.add_run_tags(run.run_id, {RESUME_NEEDED_TAG: key})
    message = (
        f"decided, but the {APPROVALS_SENSOR} sensor cannot resume it: it was parked outside a code location "
        f"(flujo-dagster run or execute_job), which the webserver cannot re-execute; run `{resume_command(run)}`"
    )
    for gate in plan.gates:
        audit(instance, run, "resume_needed", gate, message, command=resume_command(run))
    return True
