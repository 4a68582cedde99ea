"""Run-level cost: the `flujo_costs` sensor tags every finished run of a flujo job of its code location (success,
failure, cancel, or a park, which ends the run SUCCESS) with the run's own agent cost, tokens and calls, so the
Runs list shows them and filters by them (docs/costs.md)."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

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
_LOOK_BACK = timedelta(minutes=5)
"""Each tick re-reads the runs updated this long before the latest update it has seen, so a run whose finish was
committed late (another worker's clock or commit order) is still tagged; the ids already handled in this window are
kept in the cursor, so no run is handled twice."""
_SEEN_MAX = 2000
"""At most this many handled run ids are kept (the newest); a run dropped from them and read again is not written
twice either: `tag_run_costs` writes nothing when its tags already hold their values."""
_MAX_COST = Decimal(10) ** 9
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


def run_cost_tags(instance: DagsterInstance, run_id: str, skipped: list[str] | None = None) -> dict[str, str]:
    """The cost tags of run `run_id`, from its own event log (the agent calls of its step outputs and of its steps
    that failed after charging): `flujo/cost_usd` (6 decimals), `flujo/tokens`, `flujo/calls`, `flujo/cost_band`.
    A re-execution counts only its own calls, so the runs of a chain add up without counting a call twice.
    Malformed call records are not counted (described in `skipped`); a total of $1e9 or more raises ValueError
    (no real run costs that: its metadata was forged)."""
    logs = instance.all_logs(run_id, of_type=COST_EVENTS)
    calls = agent_calls((e.dagster_event for e in logs if e.dagster_event is not None), run_id, skipped)
    cost = sum((c.cost_usd for c in calls), Decimal(0))
    if cost >= _MAX_COST:
        raise ValueError(f"run {run_id} records an implausible agent cost (${_MAX_COST} or more); not tagged")
    return {
        RUN_COST_TAG: f"{cost:.6f}",
        RUN_TOKENS_TAG: str(sum(c.input_tokens + c.output_tokens for c in calls)),
        RUN_CALLS_TAG: str(len(calls)),
        RUN_COST_BAND_TAG: cost_band(cost),
    }


def tag_run_costs(instance: DagsterInstance, run_id: str, skipped: list[str] | None = None) -> bool:
    """Write run `run_id`'s cost tags in one call (Dagster's `add_run_tags` rewrites the run's tags, so one write
    cannot interleave with itself), replacing any value given at launch: a tag set by whoever launched the run is
    not a measured cost. False when the tags already held these values (nothing written)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return False
    tags = run_cost_tags(instance, run_id, skipped)
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


@dataclass(frozen=True)
class _Cursor:
    """The latest update time seen, and the runs already handled that were updated within `_LOOK_BACK` of it."""

    after: datetime | None = None
    seen: dict[str, datetime] = field(default_factory=dict)

    def dumps(self) -> str:
        newest = sorted(self.seen.items(), key=lambda item: item[1], reverse=True)[:_SEEN_MAX]
        seen = {run_id: at.isoformat() for run_id, at in newest}
        return json.dumps({"after": self.after.isoformat() if self.after else None, "seen": seen})


def _utc(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not an ISO timestamp")
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


def _load_cursor(text: str | None, log: logging.Logger | logging.LoggerAdapter[Any]) -> _Cursor:
    """The cursor `text` (None: the first tick); one that cannot be read (set by hand in the UI, say) restarts from
    the beginning, logged: runs already tagged are read again and not written (their tags hold)."""
    if not text:
        return _Cursor()
    try:
        raw = json.loads(text)
        after = raw["after"]
        seen = raw.get("seen") or {}
        return _Cursor(
            after=_utc(after) if after is not None else None,
            seen={str(run_id): _utc(at) for run_id, at in seen.items()},
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning(f"{COSTS_SENSOR}: cannot read the cursor {text[:200]!r} ({exc}); starting again from the first run")
        return _Cursor()


def _finished_since(instance: DagsterInstance, cursor: _Cursor) -> Iterator[tuple[str, str, datetime]]:
    """(run id, job name, update time) of the runs finished since `_LOOK_BACK` before the cursor and not handled
    yet, oldest update first (at most `_BATCH` of them)."""
    records = instance.get_run_records(
        filters=RunsFilter(statuses=_FINISHED, updated_after=cursor.after - _LOOK_BACK if cursor.after else None),
        limit=_BATCH + len(cursor.seen),
        order_by="update_timestamp",
        ascending=True,
    )
    for record in records:
        if record.dagster_run.run_id not in cursor.seen:
            yield record.dagster_run.run_id, record.dagster_run.job_name, record.update_timestamp


def _handle(context: SensorEvaluationContext, run_id: str, jobs: frozenset[str], location: str | None) -> bool:
    """Tag one finished run when it is a flujo job's of this location; True when its tags were written."""
    run = context.instance.get_run_by_id(run_id)
    if run is None or run.job_name not in jobs or route(run, location) == "other_location":
        return False
    skipped: list[str] = []
    written = tag_run_costs(context.instance, run_id, skipped)
    if skipped:
        context.log.warning(
            f"run {run_id}: {len(skipped)} malformed agent call record(s) not counted in its cost: {'; '.join(skipped)}"
        )
    return written


def _evaluate(context: SensorEvaluationContext) -> SensorResult:
    repository = context.repository_def
    jobs = flujo_jobs(repository) if repository is not None else frozenset()
    origin = context.code_location_origin
    location = origin.location_name if origin is not None else None
    cursor = _load_cursor(context.cursor, context.log)
    after, seen = cursor.after, dict(cursor.seen)
    tagged: list[str] = []
    for run_id, job_name, updated in list(_finished_since(context.instance, cursor)):
        after, seen[run_id] = max(after, updated) if after else updated, updated
        if job_name not in jobs:
            continue
        try:
            if _handle(context, run_id, jobs, location):
                tagged.append(run_id)
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            context.log.error(f"run {run_id}: cannot tag its cost, passed over: {type(exc).__name__}: {exc}")
    if tagged:
        context.log.info(f"tagged the cost of {len(tagged)} run(s): {', '.join(tagged)}")
    kept = {r: at for r, at in seen.items() if after is None or at > after - _LOOK_BACK}
    return SensorResult(cursor=_Cursor(after, kept).dumps(), skip_reason=None if tagged else "no finished run to tag")


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
