"""`Schedule`, `DailyPartitions`, `StaticPartitions`: when a pipeline runs and over which partitions (pure data;
the adapter compiles them to Dagster schedules and partitions definitions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Literal

from flujo_dagster.errors import ConfigurationError

__all__ = ["DailyPartitions", "Partitions", "Schedule", "ScheduleInputs", "StaticPartitions"]

ScheduleInputs = Mapping[str, object] | Callable[[datetime], Mapping[str, object]]
"""Run inputs of a scheduled run: fixed JSON values, or a function of the tick's scheduled time (timezone-aware,
in the schedule's timezone) returning them."""


def _check_timezone(owner: str, timezone: object) -> None:
    if not isinstance(timezone, str):  # whether it names a timezone is checked with the pipeline (SCHED-004, PART-002)
        raise ConfigurationError(f"{owner} timezone must be an IANA timezone name such as 'UTC', got {timezone!r}")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Run the pipeline on a cron schedule.

    `cron`: a cron string (`"0 6 * * *"`, five fields or an alias such as `"@daily"`), read in `timezone` (IANA
    name); validation refuses those Dagster would refuse (SCHED-003, SCHED-004). `inputs`: the run inputs, or a
    function of the scheduled time returning them; validated with the context model at every tick.
    `default_status`: whether the schedule starts `"stopped"` (Dagster's default) or `"running"`. `name`
    defaults to `<job name>_schedule`.
    """

    cron: str
    timezone: str = "UTC"
    inputs: ScheduleInputs = field(default_factory=lambda: MappingProxyType({}))
    default_status: Literal["stopped", "running"] = "stopped"
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cron, str):  # whether Dagster accepts it is checked with the pipeline (SCHED-003)
            raise ConfigurationError(f"Schedule cron must be a cron string like '0 6 * * *', got {self.cron!r}")
        _check_timezone("Schedule", self.timezone)
        if self.default_status not in ("stopped", "running"):
            raise ConfigurationError(
                f"Schedule default_status must be 'stopped' or 'running', got {self.default_status!r}"
            )
        if isinstance(self.inputs, Mapping):
            object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))
        elif not callable(self.inputs):
            raise ConfigurationError(
                f"Schedule inputs must be a mapping or a function of the scheduled time, got {self.inputs!r}"
            )

    def fixed_inputs(self) -> Mapping[str, object] | None:
        """The inputs when they are fixed values, None when a function computes them at each tick."""
        return self.inputs if isinstance(self.inputs, Mapping) else None


def _as_date(owner: str, name: str, value: str | date) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{owner} {name} must be a date or 'YYYY-MM-DD', got {value!r}") from exc


@dataclass(frozen=True, kw_only=True)
class DailyPartitions:
    """One partition per calendar day (keys `YYYY-MM-DD`) from `start` (inclusive) to `end` (exclusive; None:
    up to the last complete day), days counted in `timezone`. The key fills context field `input_key` (typed
    `str` or `date`). A partition's day is not a budget scope: a per-day budget charges the day of each request."""

    start: str | date
    end: str | date | None = None
    timezone: str = "UTC"
    input_key: str = "partition_key"

    def __post_init__(self) -> None:
        start = _as_date("DailyPartitions", "start", self.start)
        object.__setattr__(self, "start", start)
        if self.end is not None:
            end = _as_date("DailyPartitions", "end", self.end)
            if end <= start:
                raise ConfigurationError(f"DailyPartitions end {end} must be after start {start}")
            object.__setattr__(self, "end", end)
        _check_timezone("DailyPartitions", self.timezone)

    def sample_keys(self) -> tuple[str, ...]:
        """A key these partitions produce (the first day's): every day's key has the same form."""
        return (str(self.start),)


@dataclass(frozen=True, init=False)
class StaticPartitions:
    """A fixed list of partition keys (`keys=["en", "es"]`); the key fills context field `input_key`."""

    keys: tuple[str, ...]
    input_key: str = "partition_key"

    def __init__(self, *, keys: Iterable[str], input_key: str = "partition_key") -> None:
        listed = tuple(keys)
        if not listed or not all(isinstance(k, str) and k for k in listed):
            raise ConfigurationError(f"StaticPartitions keys must be non-empty strings, got {listed!r}")
        if len(set(listed)) != len(listed):
            raise ConfigurationError(f"StaticPartitions keys must be unique, got {listed!r}")
        object.__setattr__(self, "keys", listed)
        object.__setattr__(self, "input_key", input_key)

    def sample_keys(self) -> tuple[str, ...]:
        """The keys these partitions produce (every one)."""
        return self.keys


Partitions = DailyPartitions | StaticPartitions
