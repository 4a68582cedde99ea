"""Partitions in Dagster terms: the partitions definition of a pipeline's job and assets."""

from __future__ import annotations

from dagster import DailyPartitionsDefinition, PartitionsDefinition, StaticPartitionsDefinition

from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.schedules import DailyPartitions

__all__ = ["partitions_def"]


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
