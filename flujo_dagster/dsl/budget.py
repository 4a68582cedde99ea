"""`Budget`: a spending limit on a pipeline or an agent step (pure data; enforced by the runtime's ledger)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

from flujo_dagster.errors import ConfigurationError

__all__ = ["Budget", "BudgetScope"]

BudgetScope = Literal["run", "day"]


@dataclass(frozen=True, kw_only=True)
class Budget:
    """At most `max_cost_usd` US dollars and/or `max_tokens` tokens (input + output) of model requests.

    `scope="run"`: one run and its re-executions share the budget. `scope="day"`: every run of the pipeline on
    one calendar day shares it (the scheduled time's date in the schedule's timezone; otherwise the run's
    start in UTC). On a pipeline it covers every agent step; on an agent step, that step alone (both apply).
    Every model request reserves its worst case first (the request's size in bytes as input tokens plus its
    `max_tokens`, which a budgeted agent step must set), so parallel steps cannot overspend it together.
    """

    max_cost_usd: Decimal | None = None
    max_tokens: int | None = None
    scope: BudgetScope = "run"

    def __post_init__(self) -> None:
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ConfigurationError("Budget needs max_cost_usd, max_tokens or both")
        if self.max_cost_usd is not None:
            try:
                cost = Decimal(str(self.max_cost_usd))
            except InvalidOperation as exc:
                raise ConfigurationError(f"Budget max_cost_usd must be a number, got {self.max_cost_usd!r}") from exc
            if not cost.is_finite() or cost < 0:
                raise ConfigurationError(f"Budget max_cost_usd must be a finite number >= 0, got {cost}")
            object.__setattr__(self, "max_cost_usd", cost)
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool) or self.max_tokens < 0):
            raise ConfigurationError(f"Budget max_tokens must be an int >= 0, got {self.max_tokens!r}")
        if self.scope not in ("run", "day"):
            raise ConfigurationError(f"Budget scope must be 'run' or 'day', got {self.scope!r}")
