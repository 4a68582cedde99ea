"""Which cron strings Dagster's `ScheduleDefinition` accepts, decided without dagster.

A port of the checks Dagster runs (`is_valid_cron_string` over its vendored croniter's `expand`, dagster 1.13),
restricted to what a schedule may use: five fields or an `@daily`-style alias. tests/test_validation_dagster.py
compares `cron_problem` with Dagster's own check on generated cron strings, so the two stay in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["cron_problem", "cron_step_too_large"]

_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
_LEN_MEANS_ALL = (60, 24, 31, 12, 7)
_DAY, _MONTH, _DOW = 2, 3, 4
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_WEEKDAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_ALPHA: tuple[dict[str, int | str], ...] = ({}, {}, {"l": "l"}, dict(_MONTHS), dict(_WEEKDAYS))
_ALIASES = {
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_STEP = re.compile(r"^([^-]+)-([^-/]+)(/(\d+))?$")
_INT = re.compile(r"^\d+$")
_STAR_OR_INT = re.compile(r"^(\d+|\*)$")
_HASHED = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$")
_SPECIAL_DOW = re.compile(
    rf"^(?P<pre>((?P<he>(({'|'.join(_WEEKDAYS)})(-({'|'.join(_WEEKDAYS)}))?)"
    rf"|(({'|'.join(_MONTHS)})(-({'|'.join(_MONTHS)}))?)|\w+)#)|l)(?P<last>\d+)$"
)
# Dagster's CRON_RANGES for its "interval larger than the field" warning (day of week up to 7)
_WARN_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


class _Refused(Exception):
    """A part of the cron string Dagster refuses; the message says which and why."""


@dataclass
class _Field:
    index: int
    values: list[int | str] = field(default_factory=list)
    nth: dict[int | str, set[int | str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return _FIELDS[self.index]

    def alpha(self, token: str) -> int | str:
        found = _ALPHA[self.index].get(token)
        if found is None:
            raise _Refused(f"{token!r} is not a value of the {self.name} field")
        return found

    def alias(self, value: int) -> int:
        return 0 if self.index == _DOW and value == 7 else value  # Sunday is 0 or 7


def _expand_range(f: _Field, low_text: str, high_text: str, step_text: str) -> list[int]:
    if f.index == _DAY and high_text == "l":
        high_text = "31"
    low = low_text if _INT.match(low_text) else str(f.alpha(low_text))
    high = high_text if _INT.match(high_text) else str(f.alpha(high_text))
    if not (_INT.match(low) and _INT.match(high)):
        raise _Refused(f"the range {low_text}-{high_text} of the {f.name} field has a bound that is not a number")
    step = int(step_text)
    lo, hi = f.alias(int(low)), f.alias(int(high))
    first, last = _RANGES[f.index]
    if max(lo, hi) > last:
        raise _Refused(f"the range {low_text}-{high_text} of the {f.name} field goes past {last}")
    if step == 0:
        raise _Refused(f"the step of {low_text}-{high_text}/0 in the {f.name} field is zero")
    if lo > hi:  # wraps around: lo to the field's end, then the field's start to hi
        values = list(range(lo, last + 1, step))
        whole = list(range(first, last + 1))
        skip = 0
        if values and whole.index(values[-1]) + step > len(whole) and whole[::-1].index(values[-1]) < step:
            skip = step - whole[::-1].index(values[-1])
        return values + list(range(first + skip, hi + 1, step))
    if lo == hi:  # Jan-Jan, Sun-Sun: the whole cycle
        return list(range(first, last + 1, step))
    return list(range(lo, hi + 1, step))


def _element(f: _Field, element: str, pending: list[str | int]) -> None:
    nth: int | str | None = None
    if f.index == _DOW and (special := _SPECIAL_DOW.match(element)):
        he, last = special["he"], special["last"]
        if he:
            element, nth = he, int(last)
            if not 1 <= nth <= 5:
                raise _Refused(f"{special.string!r}: the nth weekday of a month must be 1 to 5")
        else:
            element, nth = last, "l"
    first, last_value = _RANGES[f.index]
    text = re.sub(r"^\*(/.+)$", rf"{first}-{last_value}\1", element)
    match = _STEP.search(text) or _STEP.search(re.sub(r"^(.+)/(.+)$", rf"\1-{last_value}/\2", element))
    if match:
        values = _expand_range(f, match[1], match[2], match[4] or "1")
        items = [f"{v}#{nth}" for v in values] if nth is not None and nth != "l" else values
        pending += [v for v in items if v not in pending]
        return
    if text.startswith("-"):
        raise _Refused(f"{element!r} in the {f.name} field is negative")
    value: int | str = text if _STAR_OR_INT.match(text) else f.alpha(text)
    if isinstance(value, str) and _INT.match(value):
        value = int(value)
    if isinstance(value, int):
        value = f.alias(value)
        if not first <= value <= last_value:
            raise _Refused(f"{element} is out of range for the {f.name} field ({first}-{last_value})")
    elif value not in ("*", "l"):
        raise _Refused(f"{element!r} is not a value of the {f.name} field")
    f.values.append(value)
    if nth is not None:
        f.nth.setdefault(value, set()).add(nth)


def _expand_field(index: int, expression: str) -> _Field:
    f = _Field(index)
    if _HASHED.match(expression):
        raise _Refused(f"{expression!r}: hashed (H) and random (R) values are not supported in schedules")
    if "?" in expression:
        if expression != "?" or index not in (_DAY, _DOW):
            raise _Refused(f"{expression!r}: '?' stands alone, in the day of month or day of week field")
        expression = "*"
    pending: list[str | int] = list(expression.split(","))
    while pending:
        _element(f, str(pending.pop()), pending)
    distinct = set(f.values)
    if len(distinct) == _LEN_MEANS_ALL[index] or distinct == {"*"}:
        f.values = ["*"]
    else:
        f.values = sorted(distinct, key=lambda v: f"{v:02}" if isinstance(v, int) else v)
    return f


def _problem(cron: str) -> str | None:
    text = cron.lower()
    parts = _ALIASES.get(text, text).split()
    if len(parts) != 5:
        count = f"{len(parts)} field{'' if len(parts) == 1 else 's'}"
        return f"it has {count}; Dagster reads exactly 5 (minute hour day-of-month month day-of-week)"
    fields = [_expand_field(i, p) for i, p in enumerate(parts)]
    day, month, dow = fields[_DAY].values, fields[_MONTH].values, fields[_DOW]
    if month == [2] and len(day) == 1 and day[0] in (30, 31):
        return f"February has no day {day[0]}"
    if dow.nth:
        literal = set(dow.values) - set(dow.nth) - {"*"}
        if literal and len(set(dow.values)) != _LEN_MEANS_ALL[_DOW]:
            return "the day of week field mixes plain days with nth-weekday (#) values"
    return None


def cron_problem(cron: str) -> str | None:
    """Why Dagster would refuse `cron` as a schedule's cron string, or None when it accepts it."""
    try:
        return _problem(cron)
    except _Refused as refused:
        return str(refused)


def cron_step_too_large(cron: str) -> bool:
    """Dagster's warning case: a step larger than its range (`*/90` minutes), which Dagster normalizes to fire
    more often than the step suggests. `cron` must be valid (see `cron_problem`)."""
    for index, part in enumerate(cron.lower().split()[: len(_WARN_RANGES)]):
        first, last = _WARN_RANGES[index]
        for element in part.split(","):
            text = re.sub(r"^\*(/.+)$", rf"{first}-{last}\1", element)
            match = _STEP.search(text) or _STEP.search(re.sub(r"^(.+)/(.+)$", rf"\1-{last}/\2", element))
            if not match:
                continue
            high = "31" if index == _DAY and match[2] == "l" else match[2]
            if _INT.match(match[1]) and _INT.match(high) and int(match[4] or 1) > int(high):
                return True
    return False
