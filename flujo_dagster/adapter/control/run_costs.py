"""Run-level cost: the `flujo_costs` sensor tags every finished run of a flujo job of its code location (success,
failure, cancel, or a park, which ends the run SUCCESS) with the run's own agent cost, tokens and calls, so the
Runs list shows them and filters by them (docs/costs.md)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RepositoryDefinition,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
)

from flujo_dagster.adapter.control.costs import COST_EVENTS, agent_calls
from flujo_dagster.adapter.control.routes import route
from flujo_dagster.names import (
    COSTS_SENSOR,
    RUN_CALLS_TAG,
    RUN_COST_BAND_TAG,
    RUN_COST_TAG,
    RUN_COST_TAGS,
    RUN_TOKENS_TAG,
    op_kind,
)

__all__ = ["COSTS_SENSOR", "cost_band", "costs_sensor", "flujo_jobs", "run_cost_tags", "tag_run_costs"]

_FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
_TAG_NAMES = ", ".join(RUN_COST_TAGS)
_BATCH = 200
_OVERLAP = timedelta(milliseconds=1)
"""The cursor steps back this much, so runs finished in the same instant as the last one seen are not skipped (they
are read again; a run whose tags are already right is not written)."""
_BANDS: tuple[tuple[Decimal, str], ...] = (
    (Decimal("0.01"), "<0.01"),
    (Decimal("0.10"), "0.01-0.10"),
    (Decimal(1), "0.10-1"),
    (Decimal(10), "1-10"),
)


def cost_band(cost: Decimal) -> str:
    """The band of `cost` (US dollars) for `flujo/cost_band`: `0`, `<0.01`, `0.01-0.10`, `0.10-1`, `1-10`, `>=10`
    (each band includes its lower bound)."""
    if cost <= 0:
        return "0"
    for upper, band in _BANDS:
        if cost < upper:
            return band
    return ">=10"


def run_cost_tags(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    """The cost tags of run `run_id`, from its own event log (the agent calls of its step outputs and of its steps
    that failed after charging): `flujo/cost_usd` (6 decimals), `flujo/tokens`, `flujo/calls`, `flujo/cost_band`.
    A re-execution counts only its own calls, so the runs of a chain add up without counting a call twice."""
    logs = instance.all_logs(run_id, of_type=COST_EVENTS)
    calls = agent_calls((e.dagster_event for e in logs if e.dagster_event is not None), run_id)
    cost = sum((c.cost_usd for c in calls), Decimal(0))
    return {
        RUN_COST_TAG: f"{cost:.6f}",
        RUN_TOKENS_TAG: str(sum(c.input_tokens + c.output_tokens for c in calls)),
        RUN_CALLS_TAG: str(len(calls)),
        RUN_COST_BAND_TAG: cost_band(cost),
    }


def tag_run_costs(instance: DagsterInstance, run_id: str) -> bool:
    """Write run `run_id`'s cost tags in one call (Dagster's `add_run_tags` rewrites the run's tags, so one write
    cannot interleave with itself), replacing any value given at launch: a tag set by whoever launched the run is
    not a measured cost. False when the tags already held these values (nothing written)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    tags = run_cost_tags(instance, run_id)
    if all(run.tags.get(k) == v for k, v in tags.items()):
        return False
    instance.add_run_tags(run_id, tags)
    return True


def flujo_jobs(repository: RepositoryDefinition) -> frozenset[str]:
    """The names of the jobs of `repository` that flujo built (an op of theirs carries a `flujo/kind` tag)."""
    return frozenset(
        job.name
        for job in repository.get_all_jobs()
        if any(op_kind(op.tags) is not None for op in job.graph.iterate_op_defs())
    )


def _finished_since(instance: DagsterInstance, cursor: str | None) -> Iterator[tuple[str, str, datetime]]:
    """(run id, job name, update time) of the runs finished since `cursor`, oldest update first."""
    after = datetime.fromisoformat(json.loads(cursor)["after"]) - _OVERLAP if cursor else None
    records = instance.get_run_records(
        filters=RunsFilter(statuses=_FINISHED, updated_after=after),
        limit=_BATCH,
        order_by="update_timestamp",
        ascending=True,
    )
    for record in records:
        yield record.dagster_run.run_id, record.dagster_run.job_name, record.update_timestamp


def _evaluate(context: SensorEvaluationContext) -> SensorResult:
    repository = context.repository_def
    jobs = flujo_jobs(repository) if repository is not None else frozenset()
    origin = context.code_location_origin
    location = origin.location_name if origin is not None else None
    cursor = context.cursor
    tagged: list[str] = []
    for run_id, job_name, updated in _finished_since(context.instance, context.cursor):
        cursor = json.dumps({"after": updated.isoformat()})
        run = context.instance.get_run_by_id(run_id)
        if job_name not in jobs or run is None or route(run, location) == "other_location":
            continue
        if tag_run_costs(context.instance, run_id):
            tagged.append(run_id)
    if tagged:
        context.log.info(f"tagged the cost of {len(tagged)} run(s): {', '.join(tagged)}")
    return SensorResult(cursor=cursor, skip_reason=None if tagged else "no finished run to tag")


@functools.cache
def costs_sensor(interval: timedelta = timedelta(seconds=30)) -> SensorDefinition:
    """The `flujo_costs` sensor, running by default: every `interval` it tags the runs of the flujo jobs of its code
    location that finished since its last tick (see `run_cost_tags`). One object per interval, so that several
    `build_definitions` results merge in one code location."""
    return SensorDefinition(
        name=COSTS_SENSOR,
        evaluation_fn=_evaluate,
        minimum_interval_seconds=int(interval.total_seconds()),
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Tags every finished run of a flujo job with its agent cost, tokens and calls ({_TAG_NAMES}).",
    )
