"""Schedules in Dagster terms: one `ScheduleDefinition` per scheduled pipeline, whose ticks validate the run
inputs with the context model and skip when the pipeline's per-day budget is already spent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
)
from pydantic_core import to_jsonable_python

from flujo_dagster.adapter.compile.compiler import CompiledPipeline
from flujo_dagster.adapter.compile.partitions import partitions_def
from flujo_dagster.adapter.storage.budgets import ledger_of
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.schedules import Schedule
from flujo_dagster.errors import ConfigurationError, RunInputsError
from flujo_dagster.names import BUDGET_LEDGER_KEY
from flujo_dagster.pricing.ledger import format_usd
from flujo_dagster.runtime.budget import budget_zone, day_scope, limits_of
from flujo_dagster.runtime.inputs import config_inputs
from flujo_dagster.validation.naming import schedule_name_for
from flujo_dagster.validation.schedules import partition_input

__all__ = ["schedule_for", "schedule_name", "schedules_for", "spent_reason"]


def schedule_name(compiled: CompiledPipeline) -> str:
    """The schedule's name: `Schedule(name=...)`, else `<job name>_schedule` (validation checks the same names)."""
    name = schedule_name_for(compiled.pipeline, compiled.job_name)
    assert name is not None
    return name


def _tick_inputs(pipeline: Pipeline, schedule: Schedule, name: str, when: datetime) -> dict[str, object]:
    """The tick's run inputs as JSON values: the fixed ones, or what the inputs function returns."""
    fixed = schedule.fixed_inputs()
    if fixed is not None:
        return dict(to_jsonable_python(dict(fixed)))
    produced = schedule.inputs(when)  # type: ignore[operator]
    if not isinstance(produced, Mapping):
        raise ConfigurationError(
            f"schedule {name!r} of pipeline {pipeline.name!r}: its inputs function returned "
            f"{type(produced).__name__}, not a mapping of run inputs"
        )
    return dict(to_jsonable_python(dict(produced)))


def _check_inputs(pipeline: Pipeline, name: str, raw: Mapping[str, object], partition: str | None) -> dict[str, object]:
    """The tick's inputs validated with the context model (with the partition's key), as the run config holds
    them (`runtime.inputs.config_inputs`). Raises `ConfigurationError` naming the schedule and each bad input."""
    key = partition_input(pipeline)
    filled = {key: partition} if key is not None and partition is not None else None
    try:
        return config_inputs(pipeline, raw, filled)
    except RunInputsError as exc:
        raise ConfigurationError(
            f"schedule {name!r} of pipeline {pipeline.name!r}: invalid run inputs, no run launched: "
            f"{'; '.join(exc.problems)}"
        ) from exc


def spent_reason(pipeline: Pipeline, ledger_resource: object, context: ScheduleEvaluationContext) -> str | None:
    """Why a tick must not run: the pipeline's per-day budget for today (in the budget's timezone, the day the
    run's requests will charge) is spent or halted; else None."""
    budget = pipeline.budget
    if budget is None or budget.scope != "day":
        return None
    day = datetime.now(budget_zone(budget)).date().isoformat()
    scope = day_scope(pipeline.name, day)
    limits = limits_of(budget)
    totals = ledger_of(ledger_resource, context.instance).totals(scope)
    usd = totals.spent_usd_nanos + totals.reserved_usd_nanos
    tokens = totals.spent_tokens + totals.reserved_tokens
    if totals.halted:
        return f"the per-day budget of pipeline {pipeline.name!r} for {day} is halted ({totals.halted_reason})"
    if limits.max_usd_nanos is not None and usd >= limits.max_usd_nanos:
        return (
            f"the per-day budget of pipeline {pipeline.name!r} for {day} is spent "
            f"({format_usd(usd)} of {format_usd(limits.max_usd_nanos)}); no run launched"
        )
    if limits.max_tokens is not None and tokens >= limits.max_tokens:
        return (
            f"the per-day budget of pipeline {pipeline.name!r} for {day} is spent "
            f"({tokens} of {limits.max_tokens} tokens); no run launched"
        )
    return None


def schedule_for(compiled: CompiledPipeline, ledger_resource: object) -> ScheduleDefinition:
    """The schedule of a scheduled pipeline, targeting its job.

    Each tick computes the run inputs (fixed, or the inputs function of the scheduled time), validates them
    with the context model (a bad input fails the tick with `ConfigurationError` naming the pipeline and the
    field) and skips (`SkipReason`) when the pipeline's per-day budget for today (in the budget's timezone: the
    day the run's requests will charge) is already spent. A
    daily-partitioned pipeline runs the last complete day as of the tick (as Dagster's partitioned schedules
    do); a statically partitioned one runs every partition."""
    pipeline, schedule = compiled.pipeline, compiled.pipeline.schedule
    assert schedule is not None
    name = schedule_name(compiled)
    parts = partitions_def(pipeline)
    zone = ZoneInfo(schedule.timezone)

    def evaluate(context: ScheduleEvaluationContext) -> Iterator[RunRequest | SkipReason]:
        when = context.scheduled_execution_time or datetime.now(zone)
        when = when.astimezone(zone)
        raw = _tick_inputs(pipeline, schedule, name, when)
        if parts is None:
            keys: Sequence[str | None] = [None]
        elif isinstance(parts, TimeWindowPartitionsDefinition):
            complete = parts.get_partition_keys(current_time=when)
            if not complete:
                yield SkipReason(f"pipeline {pipeline.name!r} has no complete daily partition yet at {when}")
                return
            keys = [complete[-1]]
        else:
            keys = list(parts.get_partition_keys())
        given = {key: _check_inputs(pipeline, name, raw, key) for key in keys}
        reason = spent_reason(pipeline, ledger_resource, context)
        if reason is not None:
            yield SkipReason(reason)
            return
        for key in keys:
            yield RunRequest(run_key=key, run_config=compiled.inputs_run_config(given[key]), partition_key=key)

    return ScheduleDefinition(
        name=name,
        cron_schedule=schedule.cron,
        execution_timezone=schedule.timezone,
        job=compiled.job,
        execution_fn=evaluate,
        default_status=DefaultScheduleStatus.RUNNING
        if schedule.default_status == "running"
        else DefaultScheduleStatus.STOPPED,
        description=f"Runs pipeline {pipeline.name!r} on {schedule.cron!r} ({schedule.timezone}).",
    )


def schedules_for(compiled: Sequence[CompiledPipeline], resources: Mapping[str, object]) -> list[ScheduleDefinition]:
    """A schedule per scheduled pipeline; budgets are checked in the `budget_ledger` resource's ledger."""
    ledger = resources[BUDGET_LEDGER_KEY]
    return [schedule_for(c, ledger) for c in compiled if c.pipeline.schedule is not None]
