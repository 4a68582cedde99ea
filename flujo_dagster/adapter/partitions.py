"""Partitions in Dagster terms: the partitions definition of a pipeline's job and assets, and the run input the
partition key fills."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from dagster import DailyPartitionsDefinition, OpExecutionContext, PartitionsDefinition, StaticPartitionsDefinition

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.schedules import DailyPartitions
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.validation.schedules import partition_input

__all__ = ["partition_day", "partition_input", "partitioned_inputs", "partitions_def"]


def partitions_def(pipeline: Pipeline) -> PartitionsDefinition | None:
    """The Dagster partitions of the pipeline's job and assets (None when unpartitioned)."""
    parts = pipeline.partitions
    if parts is None:
        return None
    if isinstance(parts, DailyPartitions):
        return DailyPartitionsDefinition(
            start_date=str(parts.start),
            end_date=None if parts.end is None else str(parts.end),
            timezone=parts.timezone,
        )
    return StaticPartitionsDefinition(list(parts.keys))


def partition_day(pipeline: Pipeline, partition_key: str) -> date | None:
    """The day of a daily partition's key, None for other partitions."""
    if isinstance(pipeline.partitions, DailyPartitions):
        return date.fromisoformat(partition_key)
    return None


def partitioned_inputs(
    pipeline: Pipeline, context: OpExecutionContext, raw: Mapping[str, object]
) -> Mapping[str, object]:
    """The run inputs with the partition key filled in (unchanged for an unpartitioned pipeline).

    Raises `ConfigurationError` when a partitioned pipeline runs without a partition key, or when the inputs
    give the partition field a different value."""
    key = partition_input(pipeline)
    if key is None:
        return raw
    if not context.has_partition_key:
        raise ConfigurationError(
            f"pipeline {pipeline.name!r} is partitioned: launch its runs for a partition (a backfill, the UI's "
            "partition picker, or execute_in_process/materialize with partition_key=...)"
        )
    value = context.partition_key
    if key in raw and str(raw[key]) != value:
        raise ConfigurationError(
            f"pipeline {pipeline.name!r}: input {key!r}={raw[key]!r} contradicts the run's partition key "
            f"{value!r}; leave {key!r} out of the inputs (the partition key fills it)"
        )
    return {**raw, key: value}
