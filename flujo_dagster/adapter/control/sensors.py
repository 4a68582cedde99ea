"""Sensors flujo adds to a code location: `flujo_validation` (quarantined pipelines stay visible) and
`flujo_approvals` (resumes parked runs once decided)."""

import json
import urllib.request
from collections.abc import Collection
from datetime import timedelta

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SkipReason

from flujo_dagster.adapter.control.approvals import escalate_due, record_resume, resumable
from flujo_dagster.adapter.storage.approval_settings import ApprovalSettings
from flujo_dagster.config import DEFAULT_APPROVALS_INTERVAL
from flujo_dagster.errors import ApprovalError, ConfigurationError
from flujo_dagster.names import APPROVALS_SENSOR, VALIDATION_SENSOR
from flujo_dagster.validation import ValidationReport

__all__ = ["APPROVALS_SENSOR", "VALIDATION_SENSOR", "approvals_sensor", "launch_reexecution", "validation_sensor"]


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


_REEXECUTE = """
mutation Resume($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
    ... on UnauthorizedError { message }
    ... on RunConflict { message }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on NoModeProvidedError { message }
  }
}
"""
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def launch_reexecution(webserver_url: str, parent_run_id: str, tags: dict[str, str]) -> str:
    """Re-execute `parent_run_id` from failure the way the UI does (GraphQL `launchRunReexecution`, parent's
    tags inherited, `tags` added); the new run's id. `ApprovalError` says what went wrong and where."""
    params = {
        "parentRunId": parent_run_id,
        "strategy": "FROM_FAILURE",
        "useParentRunTags": True,
        "extraTags": [{"key": k, "value": v} for k, v in tags.items()],
    }
    body = json.dumps({"query": _REEXECUTE, "variables": {"params": params}}).encode()
    request = urllib.request.Request(
        f"{webserver_url.rstrip('/')}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with _NO_PROXY.open(request, timeout=30) as response:
            payload = json.load(response)
    except (OSError, ValueError) as exc:  # unreachable, or an answer that is not GraphQL's JSON
        raise ApprovalError(
            f"cannot reach the Dagster webserver at {webserver_url} to resume run {parent_run_id} ({exc}); "
            "resumes are launched through its GraphQL API: run the webserver there, or pass "
            "build_definitions(webserver_url=...)"
        ) from exc
    result = (payload.get("data") or {}).get("launchRunReexecution") or {}
    if result.get("__typename") != "LaunchRunSuccess":
        raise ApprovalError(f"the webserver at {webserver_url} refused to resume run {parent_run_id}: {payload}")
    run_id: str = result["run"]["runId"]
    return run_id


def approvals_sensor(
    webserver_url: str,
    *,
    interval: timedelta = DEFAULT_APPROVALS_INTERVAL,
    settings: ApprovalSettings | None = None,
    jobs: Collection[str] | None = None,
) -> SensorDefinition:
    """A sensor, running by default, that escalates parked gates whose deadline escalates them and resumes each
    parked run once a decision for one of its gates is recorded (or its deadline decides): a re-execution from
    failure launched through the webserver's GraphQL API (a sensor's RunRequest cannot re-execute), at most once
    per set of decisions (`flujo/resume_key`). Only runs of `jobs` (this code location's, when given)."""
    chosen = settings or ApprovalSettings()

    def evaluate(context: SensorEvaluationContext) -> SkipReason:
        secret = chosen.secret()
        if chosen.require_signed_decisions and secret is None:
            raise ApprovalError(
                f"require_signed_decisions=True, but {chosen.secret_env} is not set where this code location "
                "runs, so the sensor cannot check signed decisions: set it to the approvers' secret"
            )
        # each run on its own: a malformed tag or a run that cannot be read is logged, the others go on
        for run_id, gate in escalate_due(context.instance, jobs=jobs, report=context.log.warning):
            context.log.info(f"escalated gate {gate} of parked run {run_id}")
        resumed, failed = [], []
        for parked in resumable(context.instance, secret=secret, jobs=jobs, report=context.log.warning):
            try:
                run_id = launch_reexecution(webserver_url, parked.run_id, parked.tags)
            except ApprovalError as exc:  # one run's failure must not keep the others parked
                context.log.error(str(exc))
                failed.append(str(exc))
                continue
            parent = context.instance.get_run_by_id(parked.run_id)
            if parent is not None:
                record_resume(context.instance, parent, parked, run_id)
            context.log.info(f"resumed run {parked.run_id} as {run_id} (decided: {', '.join(parked.gates)})")
            resumed.append(run_id)
        if failed:  # the tick fails, so the problem shows in the UI; the others were resumed
            raise ApprovalError(
                f"resumed {len(resumed)} run(s); {len(failed)} could not be resumed: " + "; ".join(failed)
            )
        summary = f"resumed {len(resumed)} parked run(s): {', '.join(resumed)}" if resumed else "nothing to resume"
        return SkipReason(summary)

    return SensorDefinition(
        name=APPROVALS_SENSOR,
        evaluation_fn=evaluate,
        minimum_interval_seconds=int(interval.total_seconds()),
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Resumes parked runs once a decision is recorded, through the webserver at {webserver_url}.",
    )
