"""`Budget`: a spending limit on a pipeline or an agent step (pure data; enforced by the runtime's ledger)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from flujo_dagster.dsl.durations import duration
from flujo_dagster.errors import ConfigurationError

__all__ = ["DEFAULT_MAX_WAIT", "MAX_COUNT", "MAX_USD", "Budget", "BudgetScope", "budget_problem", "is_token_count"]

BudgetScope = Literal["run", "day"]

MAX_COUNT = 2**62
"""Amounts the ledger counts (tokens, nano-dollars) stay below this, so that sums of many never overflow."""

MAX_USD = Decimal(MAX_COUNT - 1) / 1_000_000_000
"""The largest `max_cost_usd` the ledger can hold (nano-dollars below `MAX_COUNT`)."""


DEFAULT_MAX_WAIT = timedelta(minutes=2)
"""How long a request waits, by default, for requests in flight to settle before its budget refuses it."""


def is_token_count(value: object) -> bool:
    """Whether `value` is a whole number of tokens the ledger can count: an int (not a bool) in [0, 2**62)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT


def _cost(value: object) -> Decimal:
    """`max_cost_usd` as a Decimal: a finite number of dollars in [0, MAX_USD] (a bool or another type refused)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise ConfigurationError(
            f"Budget max_cost_usd must be a number of US dollars (Decimal, int, float or a numeric str), got "
            f"{type(value).__name__} {value!r}"
        )
    try:
        cost = Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ConfigurationError(f"Budget max_cost_usd must be a number, got {value!r}") from exc
    if not cost.is_finite() or not 0 <= cost <= MAX_USD:
        raise ConfigurationError(f"Budget max_cost_usd must be a finite number from 0 to {MAX_USD}, got {value!r}")
    return cost


@dataclass(frozen=True, kw_only=True)
class Budget:
    """At most `max_cost_usd` US dollars and/or `max_tokens` tokens (input + output) of model requests.

    `scope="run"`: one run and its re-executions share the budget. `scope="day"`: every run of the pipeline
    shares it per calendar day in `timezone` (an IANA name, default UTC): each request charges the day on which
    it is reserved; no tag, partition or schedule chooses the day. On a pipeline it covers every agent step; on
    an agent step, that step alone (both apply). Every model request reserves its worst case first (the
    request's size in bytes as input tokens plus its `max_tokens`, which a budgeted agent step must set), so
    parallel steps cannot overspend it together. A request whose worst case does not fit the remainder while
    other requests of the budget are in flight waits for them to settle, first come first served, up to
    `max_wait` (0: refused at once); one that could not fit even with none in flight is refused at once.
    Whether `timezone` names a zone is checked with the pipeline (BUDGET-003).
    """

    max_cost_usd: Decimal | None = None
    max_tokens: int | None = None
    scope: BudgetScope = "run"
    timezone: str = "UTC"
    max_wait: timedelta = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ConfigurationError("Budget needs max_cost_usd, max_tokens or both")
        if self.max_cost_usd is not None:
            object.__setattr__(self, "max_cost_usd", _cost(self.max_cost_usd))
        if self.max_tokens is not None and not is_token_count(self.max_tokens):
            raise ConfigurationError(
                f"Budget max_tokens must be a whole number (int) from 0 to 2**62 - 1, got "
                f"{type(self.max_tokens).__name__} {self.max_tokens!r}"
            )
        if self.scope not in ("run", "day"):
            raise ConfigurationError(f"Budget scope must be 'run' or 'day', got {self.scope!r}")
        if not isinstance(self.timezone, str):
            raise ConfigurationError(
                f"Budget timezone must be an IANA timezone name such as 'UTC', got {self.timezone!r}"
            )
        duration(self.max_wait, "Budget max_wait")


def budget_problem(budget: Budget) -> str | None:
    """What is wrong with the values `budget` holds now, or None. The constructor refuses these already; this
    catches a budget changed after it was made (`object.__setattr__`) or made without its `__post_init__`."""
    cost, tokens = budget.max_cost_usd, budget.max_tokens
    if cost is None and tokens is None:
        return "it sets neither max_cost_usd nor max_tokens"
    if cost is not None and not (isinstance(cost, Decimal) and cost.is_finite() and 0 <= cost <= MAX_USD):
        return f"its max_cost_usd {cost!r} is not a finite number of dollars from 0 to {MAX_USD}"
    if tokens is not None and not is_token_count(tokens):
        return f"its max_tokens {tokens!r} is not a whole number from 0 to 2**62 - 1"
    if budget.scope not in ("run", "day") or not isinstance(budget.timezone, str):
        return f"its scope {budget.scope!r} is not 'run' or 'day', or its timezone {budget.timezone!r} is not a str"
    if not isinstance(budget.max_wait, timedelta) or budget.max_wait < timedelta(0):
        return f"its max_wait {budget.max_wait!r} is not a timedelta of at least 0"
    return None
