"""Durations: every public option that is a length of time takes a `datetime.timedelta` (docs/concepts.md)."""

from __future__ import annotations

from datetime import timedelta

from flujo_dagster.errors import ConfigurationError

__all__ = ["duration", "optional_duration"]


def duration(value: object, what: str, *, positive: bool = False, signed: bool = False) -> timedelta:
    """`value` when it is a `timedelta` (> 0 with `positive`, any sign with `signed`, else >= 0); otherwise
    `ConfigurationError` naming `what` (e.g. "Retry delay") and the value, with the fix."""
    if not isinstance(value, timedelta):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        hint = f": write e.g. timedelta(seconds={value!r})" if number else ""
        raise ConfigurationError(f"{what} must be a datetime.timedelta, got {value!r}{hint}")
    if not signed and (value < timedelta(0) or (positive and value == timedelta(0))):
        raise ConfigurationError(f"{what} must be {'positive' if positive else 'at least 0'}, got {value!r}")
    return value


def optional_duration(value: object, what: str, *, positive: bool = False, signed: bool = False) -> timedelta | None:
    """`duration(value, ...)`, or None when `value` is None."""
    return None if value is None else duration(value, what, positive=positive, signed=signed)
