"""What the leaf executor and the interpreter report about the steps they run: one record per finished step,
and each failed attempt that will be tried again; and what each model request of a step was charged (`Meter`),
failed attempts included, so that what is reported adds up to what the budget ledger recorded."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

__all__ = ["Charge", "Meter", "Reporter", "StepRecord"]


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """What one step did: for the per-step table in an inline op's metadata."""

    path: str
    kind: str
    status: str  # "ok", "failed", "ignored"
    duration_s: float
    attempts: int = 1
    model: str | None = None
    model_source: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 0
    cost_usd: Decimal | None = None
    price_source: str | None = None
    error: str | None = None
    usage_unknown: bool = False
    """A response reported no usage: its cost is the reservation (budgeted) or a lower bound (not budgeted)."""
    cache_hits: int = 0
    """Model requests served from the call cache (no request made, $0)."""
    saved_cost_usd: Decimal = Decimal(0)
    """What the cache hits would have cost, priced for the model that answered them."""


@dataclass(frozen=True, kw_only=True)
class Charge:
    """What one model request (budgeted) or one agent run (not budgeted) was charged. `cost_usd` is None when
    nothing could be priced (no budget and no price for the answering model)."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    requests: int = 1
    cost_usd: Decimal | None
    price_source: str
    usage_unknown: bool = False
    reserved_usd: Decimal | None = None
    """What the budget ledger reserved for the request before it started (None: not budgeted)."""
    reserved_tokens: int | None = None
    cache_hits: int = 0
    saved_usd: Decimal = Decimal(0)


class Meter:
    """The charges of one step, across all its attempts, in the order they were made."""

    def __init__(self) -> None:
        self.charges: list[Charge] = []

    def add(self, charge: Charge) -> None:
        """Record one charge."""
        self.charges.append(charge)

    def record(self, base: StepRecord, model_source: str | None = None) -> StepRecord:
        """`base` with the model, tokens, requests, cost and price source of every charge (unchanged without)."""
        charges = self.charges
        if not charges:
            return base
        costs = [c.cost_usd for c in charges if c.cost_usd is not None]
        return replace(
            base,
            model=charges[-1].model,
            model_source=model_source or base.model_source,
            input_tokens=sum(c.input_tokens for c in charges),
            output_tokens=sum(c.output_tokens for c in charges),
            cache_read_tokens=sum(c.cache_read_tokens for c in charges),
            requests=sum(c.requests for c in charges),
            cost_usd=sum(costs, Decimal(0)) if costs else None,
            price_source="; ".join(dict.fromkeys(c.price_source for c in charges if c.price_source)),
            usage_unknown=any(c.usage_unknown for c in charges),
            cache_hits=sum(c.cache_hits for c in charges),
            saved_cost_usd=sum((c.saved_usd for c in charges), Decimal(0)),
        )


class Reporter(Protocol):
    """Receives a record for every step as it finishes, and every failed attempt before it is tried again."""

    def step_finished(self, record: StepRecord) -> None: ...

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None: ...
