"""Sensors flujo adds to a code location: `flujo_validation` (quarantined pipelines stay visible) and
`flujo_approvals` (resumes parked runs once decided)."""

import functools
from collections.abc import Collection, Iterator
from datetime import timedelta

from dagster import DagsterRun, DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason

# not exported by name in Dagster 1.13: the only sensor result, besides a RunRequest, that the daemon records as a
# SUCCESS tick naming the run it acted on (docs/architecture.md, "The approvals sensor's ticks")
from dagster._core.definitions.run_request import DagsterRunReaction

from flujo_dagster.adapter.control.approvals import Resumable, escalate_due, resumable
from flujo_dagster.adapter.control.graphql import Webserver, launch_reexecution
from flujo_dagster.adapter.control.launch import launch_resume
from flujo_dagster.adapter.control.routes import report_unresumable, route
from flujo_dagster.adapter.control.run_costs import flujo_jobs
from flujo_dagster.adapter.storage.approval_settings import ApprovalSettings
from flujo_dagster.config import DEFAULT_APPROVALS_INTERVAL, shown_url, webserver_headers
from flujo_dagster.errors import ApprovalError, ConfigurationError
from flujo_dagster.names import APPROVALS_SENSOR, RESUMED_BY_TAG, SENSOR_NAME_TAG, VALIDATION_SENSOR
from flujo_dagster.validation import ValidationReport

__all__ = [
    "APPROVALS_SENSOR",
    "VALIDATION_SENSOR",
    "approvals_sensor",
    "launch_reexecution",
    "location_approvals_sensor",
    "validation_sensor",
]


def validation_sensor(quarantined: ValidationReport) -> SensorDefinition:
    """A sensor, running by default, that fails every tick with the findings of the pipelines
    `build_definitions(on_invalid="quarantine")` left out."""
    names = quarantined.invalid_pipelines
    body = "\n".join(f"  {f}" for f in quarantined.errors)
    message = (
        f"flujo_dagster left {len(names)} invalid pipeline(s) out of this code location ({', '.join(names)}); "
        f"nothing of them can run until they are fixed:\n{body}"
    )

    def evaluate(context: SensorEvaluationContext) -> SkipReason:
        raise ConfigurationError(message, quarantined.errors)

    return SensorDefinition(
        name=VALIDATION_SENSOR,
        evaluation_fn=evaluate,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description="Fails while pipelines are quarantined for invalid definitions; its error lists the findings.",
    )


def _resume(
    context: SensorEvaluationContext, server: Webserver, parked: Resumable, location: str | None
) -> DagsterRun | None:
    """Launch the resume of `parked` through the webserver and record it; None when this sensor leaves it (another
    code location's run, or one parked outside any code location: reported once). `ApprovalError` (redacted)
    when the launch failed or cannot be confirmed."""
    parent = context.instance.get_run_by_id(parked.run_id)
    if parent is None:
        return None
    way = route(parent, location)
    if way == "other_location":
        return None  # that location's own sensor resumes it
    if way == "in_process":
        if report_unresumable(context.instance, parent, parked):
            context.log.warning(
                f"run {parked.run_id} is decided but was parked outside a code location; the sensor cannot "
                f"re-execute it: run `flujo-dagster resume {parked.run_id}` (see its audit trail)"
            )
        return None
    tags = {SENSOR_NAME_TAG: APPROVALS_SENSOR, RESUMED_BY_TAG: f"sensor {APPROVALS_SENSOR}"}
    launched = launch_resume(context.instance, server, parent, parked, tags)
    context.log.info(f"resumed run {parked.run_id} as {launched.run_id} ({'; '.join(parked.because)})")
    return launched


def approvals_sensor(
    webserver_url: str,
    *,
    interval: timedelta = DEFAULT_APPROVALS_INTERVAL,
    settings: ApprovalSettings | None = None,
    jobs: Collection[str] | None = None,
) -> SensorDefinition:
    """A sensor, running by default, that escalates parked gates whose deadline escalates them and resumes each
    parked run once a decision for one of its gates is recorded (or its deadline decides): a re-execution
    launched through the webserver's GraphQL API (a sensor's RunRequest cannot re-execute), at most once per set of
    decisions (`flujo/resume_key`), confirmed in the instance before the run is marked resumed. Only runs of
    `jobs` when given, else of the flujo jobs of the code location the sensor is loaded in. The webserver's headers
    (`FLUJO_DAGSTER_WEBSERVER_TOKEN`, `FLUJO_DAGSTER_WEBSERVER_HEADERS`) are read at every tick; no credential is
    ever shown. A tick that resumed runs succeeds naming them; a run parked outside a code location is reported
    once on the run."""
    chosen = settings or ApprovalSettings()

    def evaluate(context: SensorEvaluationContext) -> Iterator[SkipReason | DagsterRunReaction]:
        secret = chosen.secret()
        if chosen.require_signed_decisions and secret is None:
            raise ApprovalError(
                f"require_signed_decisions=True, but {chosen.secret_env} is not set where this code location "
                "runs, so the sensor cannot check signed decisions: set it to the approvers' secret"
            )
        server = Webserver(webserver_url, headers=webserver_headers())
        origin = context.code_location_origin
        location = origin.location_name if origin is not None else None
        repository = context.repository_def
        served = jobs if jobs is not None or repository is None else flujo_jobs(repository)
        # each run on its own: a malformed tag or a run that cannot be read is logged, the others go on
        for run_id, gate in escalate_due(context.instance, jobs=served, report=context.log.warning):
            context.log.info(f"escalated gate {gate} of parked run {run_id}")
        resumed: list[DagsterRun] = []
        failed: list[str] = []
        for parked in resumable(context.instance, secret=secret, jobs=served, report=context.log.warning):
            try:
                launched = _resume(context, server, parked, location)
            except ApprovalError as exc:  # one run's failure must not keep the others parked
                context.log.error(str(exc))
                failed.append(str(exc))
                continue
            if launched is not None:
                resumed.append(launched)
        if failed:  # the tick fails, so the problem shows in the UI; the others were resumed
            done = ", ".join(f"{r.parent_run_id} as {r.run_id}" for r in resumed) or "none"
            raise ApprovalError(
                f"resumed {len(resumed)} run(s) ({done}); {len(failed)} could not be resumed: " + "; ".join(failed)
            )
        if not resumed:
            yield SkipReason("nothing to resume")
        for run in resumed:  # a SUCCESS tick naming the resumed runs (a SkipReason would read "skipped")
            yield DagsterRunReaction(dagster_run=run, run_status=run.status)

    return SensorDefinition(
        name=APPROVALS_SENSOR,
        evaluation_fn=evaluate,
        minimum_interval_seconds=int(interval.total_seconds()),
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Resumes parked runs once a decision is recorded, through the webserver at {shown_url(webserver_url)}."
        ),
    )


@functools.cache
def location_approvals_sensor(webserver_url: str, interval: timedelta, settings: ApprovalSettings) -> SensorDefinition:
    """The `flujo_approvals` sensor `build_definitions` adds: one object per (url, interval, settings), serving every
    flujo job of the code location it is loaded in, so that several `build_definitions` results (or components)
    merge in one location."""
    return approvals_sensor(webserver_url, interval=interval, settings=settings)
