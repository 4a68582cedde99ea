"""Rules for a pipeline's schedule (SCHED-*) and partitions (PART-*); schedule names: see `naming`."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import ValidationError

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.schedules import DailyPartitions
from flujo_dagster.names import child_path
from flujo_dagster.validation.cron import cron_problem, cron_step_too_large
from flujo_dagster.validation.findings import Finding
from flujo_dagster.validation.names import (
    INVALID_PARTITION_SUBSTRINGS,
    MAX_STORED_NAME,
    is_timezone,
    storage_name_problem,
)
from flujo_dagster.validation.typecompat import type_adapter

__all__ = ["partition_input", "rule_partitions", "rule_schedule"]


def partition_input(pipeline: Pipeline) -> str | None:
    """The context field the partition key fills, or None for an unpartitioned pipeline."""
    return pipeline.partitions.input_key if pipeline.partitions is not None else None


def _when(pipeline: Pipeline) -> Iterator[Finding]:
    """SCHED-003: a cron string Dagster accepts (a warning when its step is larger than its range); SCHED-004: a
    known timezone."""
    schedule, path = pipeline.schedule, child_path(pipeline.name, "schedule")
    assert schedule is not None
    problem = cron_problem(schedule.cron)
    if problem is not None:
        yield Finding(
            code="SCHED-003",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"Dagster refuses the cron string {schedule.cron!r}: {problem}.",
            hint="write five fields, minute hour day-of-month month day-of-week (e.g. '0 6 * * *'), or an alias "
            "such as '@daily'",
        )
    elif cron_step_too_large(schedule.cron):
        yield Finding(
            code="SCHED-003",
            severity="warning",
            pipeline=pipeline.name,
            path=path,
            message=f"the cron string {schedule.cron!r} steps past its field's range, so Dagster runs it more often "
            "than the step suggests ('*/90' minutes fires every hour).",
            hint="use a step within the field's range, or a coarser field ('0 */3 * * *' for every 3 hours)",
        )
    if not is_timezone(schedule.timezone):
        yield Finding(
            code="SCHED-004",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"unknown timezone {schedule.timezone!r}.",
            hint="use an IANA timezone name such as 'UTC' or 'Europe/Madrid'",
        )


def rule_schedule(pipeline: Pipeline) -> Iterator[Finding]:
    """SCHED-001: a schedule with fixed inputs gives every required input (the partition key aside).
    SCHED-002: its fixed inputs name only keys a run starts with, and not the partition key field.
    SCHED-003 and SCHED-004: its cron string and timezone."""
    schedule = pipeline.schedule
    if schedule is None:
        return
    yield from _when(pipeline)
    given = schedule.fixed_inputs()
    if given is None:  # a function of the scheduled time: checked at each tick
        return
    path = child_path(pipeline.name, "schedule")
    missing = [k for k in pipeline.input_keys() if k not in given and k != partition_input(pipeline)]
    if missing:
        yield Finding(
            code="SCHED-001",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"the schedule gives no value for required run input(s) {missing}.",
            hint="add them to Schedule(inputs={...}), pass a function of the scheduled time, or give the "
            "context fields defaults",
        )
    unknown = sorted(set(given) - set(pipeline.run_input_keys()))
    if unknown:
        yield Finding(
            code="SCHED-002",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"the schedule's inputs name {unknown}, which are not run inputs of {pipeline.context.__name__}.",
            hint="a run takes the context fields no step writes; remove these keys or fix their spelling",
        )
    key = partition_input(pipeline)
    if key is not None and key in given:
        yield Finding(
            code="SCHED-002",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"the schedule's inputs give the partition key field {key!r}, which each run's partition fills.",
            hint=f"remove {key!r} from the schedule's inputs",
        )


def _partitions_dagster_refuses(pipeline: Pipeline) -> Iterator[Finding]:
    """PART-002: a daily partitions' timezone is known; PART-003: static keys hold nothing Dagster refuses;
    PART-004: nor anything that cannot name a stored file (`..`, `/`, more than 100 characters, ...)."""
    partitions, path = pipeline.partitions, child_path(pipeline.name, "partitions")
    if isinstance(partitions, DailyPartitions):
        if not is_timezone(partitions.timezone):
            yield Finding(
                code="PART-002",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"unknown timezone {partitions.timezone!r}.",
                hint="use an IANA timezone name such as 'UTC' or 'Europe/Madrid'",
            )
        return
    assert partitions is not None
    for key in partitions.keys:
        refused = [s for s in INVALID_PARTITION_SUBSTRINGS if s in key]
        if refused:
            yield Finding(
                code="PART-003",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"Dagster refuses partition key {key!r}: it holds {', '.join(map(repr, refused))}.",
                hint="partition keys may not hold '...' or control characters (tab, newline, ...)",
            )
            continue
        problem = storage_name_problem(key)
        if problem is not None:
            yield Finding(
                code="PART-004",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"partition key {key!r} cannot name a stored file: {problem}.",
                hint=f"use keys of at most {MAX_STORED_NAME} characters without '/', '\\' or control characters, "
                "other than '.' and '..' (each partition's asset values are stored in a file named after its key)",
            )


def rule_partitions(pipeline: Pipeline) -> Iterator[Finding]:
    """PART-001: the partition key fills a context field that no step writes and whose type accepts the keys.
    PART-002, PART-003 and PART-004: what Dagster, or the storage, refuses of the partitions themselves."""
    partitions = pipeline.partitions
    if partitions is None:
        return
    yield from _partitions_dagster_refuses(pipeline)
    key, path = partitions.input_key, child_path(pipeline.name, "partitions")
    kind = type(partitions).__name__
    if key not in pipeline.fields:
        yield Finding(
            code="PART-001",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"{kind} input_key {key!r} is not a field of {pipeline.context.__name__}.",
            hint=f"add a field `{key}: str` (or `date` for DailyPartitions) to the context, or set input_key",
        )
        return
    if key in pipeline.written_keys():
        yield Finding(
            code="PART-001",
            severity="error",
            pipeline=pipeline.name,
            path=path,
            message=f"partition key field {key!r} is written by a step; the partition key must be a run input.",
            hint="use another context field for the partition key",
        )
    adapter = type_adapter(pipeline.fields[key])
    for sample in partitions.sample_keys():
        try:
            adapter.validate_python(sample)
        except ValidationError as exc:
            yield Finding(
                code="PART-001",
                severity="error",
                pipeline=pipeline.name,
                path=path,
                message=f"field {key!r} rejects partition key {sample!r}: {exc.errors()[0]['msg']}.",
                hint="type the field `str` (or `date` for DailyPartitions)",
            )
