"""The budget ledger: reserve a model request's cost before it is sent, reconcile it with the actual cost after.

Amounts are exact integers: money in nano-US-dollars (`usd_nanos`, 1 USD = 1_000_000_000) and tokens.
A *scope* is any string that names a budget (a run, a team, a pipeline...); the limits are given on each
`reserve` call, the ledger keeps what was spent and what is reserved per scope.

Semantics shared by every implementation:

- `reserve` is one atomic transaction across threads and processes: a halted scope refuses; a request that would
  take `spent + reserved + requested` above a limit refuses; either refusal writes nothing.
- `reconcile` closes an open reservation with the actual spend, recorded even above a limit (it happened). An actual
  above the reservation (usd or tokens) is an *overshoot*: counted, and it halts the scope until `resume(scope)`.
- `release` closes an open reservation with no spend (the request failed before anything was charged).
- Closing is idempotent: `reconcile` or `release` on a reservation that is already closed (reconciled, released
  or recovered) changes nothing; `reconcile` then returns the overshoot flag recorded when it was first closed.
  An id the ledger never issued raises `StorageError`.
- `admit` (a ledger that queues: `AdmittingLedger`) is `reserve` in several scopes at once, all or none, first
  come first served: a request that fits no scope's remainder while reservations are in flight there, or that
  arrives behind an older live ticket in one of its scopes, holds a ticket (queued in every scope it charges,
  leased: a ticket not renewed within its lease expires) and tries again later. Reconciling and releasing never
  wait on tickets.
- `recover(run_id)` closes the reservations of a run whose process died as "recovered", counted as spent at their
  reserved amount (the provider may have charged). Call it only when no process of that run is still running.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar, runtime_checkable

from flujo_dagster.errors import UsageLimitExceededError

__all__ = [
    "USD_NANOS",
    "AdmittingLedger",
    "BudgetLedger",
    "EntryState",
    "IdentifiedLedger",
    "LedgerEntry",
    "Limits",
    "Reservation",
    "ScopeTotals",
    "Usage",
    "Waiting",
    "format_usd",
    "libpq_url",
]

USD_NANOS = 1_000_000_000
"""Nano-US-dollars in one US dollar."""

_MAX_AMOUNT = 2**62  # far below the 64-bit column limit even after summing many entries

_C = TypeVar("_C")

EntryState = Literal["reserved", "reconciled", "released", "recovered"]


def _check_amount(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value < _MAX_AMOUNT:
        raise ValueError(f"{name} must be between 0 and 2**62, got {value}")


@dataclass(frozen=True)
class Usage:
    """An amount of money (nano-USD) and tokens: what a request reserves or actually costs."""

    usd_nanos: int
    tokens: int

    def __post_init__(self) -> None:
        _check_amount("Usage.usd_nanos", self.usd_nanos)
        _check_amount("Usage.tokens", self.tokens)


@dataclass(frozen=True)
class Limits:
    """The limits of a scope; `None` means no limit on that amount."""

    max_usd_nanos: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_usd_nanos is not None:
            _check_amount("Limits.max_usd_nanos", self.max_usd_nanos)
        if self.max_tokens is not None:
            _check_amount("Limits.max_tokens", self.max_tokens)


@dataclass(frozen=True)
class Reservation:
    """An open reservation, as `reserve` returns it; hand it to `reconcile` or `release`."""

    id: str
    scope: str
    run_id: str
    step: str
    usd_nanos: int
    tokens: int


@dataclass(frozen=True)
class ScopeTotals:
    """What a scope has spent and holds reserved, how many overshoots it saw, and whether it is halted."""

    scope: str
    spent_usd_nanos: int
    spent_tokens: int
    reserved_usd_nanos: int
    reserved_tokens: int
    overshoots: int
    halted: bool
    halted_reason: str | None = None


@dataclass(frozen=True)
class LedgerEntry:
    """One reservation and how it closed. `actual` is None while open and for a release (nothing was spent)."""

    id: str
    scope: str
    run_id: str
    step: str
    reserved: Usage
    actual: Usage | None
    state: EntryState
    overshoot: bool
    created_at: float
    closed_at: float | None
    dimensions: Mapping[str, str] = field(default_factory=dict)
    """What the spend is reported by, never charged by: the run's `partition` key, the `scheduled_day` of a
    scheduled run (empty when neither)."""


@runtime_checkable
class BudgetLedger(Protocol):
    """Reserves, reconciles and releases model-request costs atomically across threads and processes."""

    def reserve(
        self,
        scope: str,
        limits: Limits,
        amount: Usage,
        *,
        run_id: str,
        step: str,
        dimensions: Mapping[str, str] | None = None,
    ) -> Reservation:
        """Reserve `amount` in `scope`; raises `UsageLimitExceededError` (writing nothing) when the scope is
        halted or `spent + reserved + amount` would exceed a limit. `dimensions` are recorded with the entry
        (flujo passes them only when there are any, so a ledger of your own may leave the argument out)."""
        ...

    def reconcile(self, reservation: Reservation, actual: Usage) -> bool:
        """Replace the reservation by the actual spend; True when it overshot (which halts the scope)."""
        ...

    def release(self, reservation: Reservation) -> None:
        """Close the reservation with no spend (the request failed)."""
        ...

    def recover(self, run_id: str) -> int:
        """Close the open reservations of a dead run as spent at their reserved amount; returns how many."""
        ...

    def resume(self, scope: str) -> bool:
        """Lift the halt of a scope (its spend and overshoot count stay); True when it was halted."""
        ...

    def totals(self, scope: str) -> ScopeTotals:
        """The counters of `scope` (zeros for a scope never used)."""
        ...

    def entries(self, *, run_id: str | None = None, scope: str | None = None) -> list[LedgerEntry]:
        """Every entry, optionally of one run and/or scope, oldest first."""
        ...

    def close(self) -> None:
        """Close this object's connections (it reconnects if used again)."""
        ...


@dataclass(frozen=True)
class Waiting:
    """Why `admit` did not admit a request yet: the first scope (in name order) that held it back, and why."""

    scope: str
    reason: str


@runtime_checkable
class AdmittingLedger(Protocol):
    """A ledger that queues requests which must wait for reservations in flight (see the module's semantics)."""

    def admit(
        self,
        claims: Sequence[tuple[str, Limits]],
        amount: Usage,
        *,
        ticket: str,
        lease_s: float,
        run_id: str,
        step: str,
        dimensions: Mapping[str, str] | None = None,
    ) -> list[Reservation] | Waiting:
        """Reserve `amount` in each scope of `claims` (scope, its limits) when it fits every one and `ticket` is
        first among the live tickets of each: the reservations, in the order of `claims`. Else hold `ticket`
        (queued in each scope, renewed for `lease_s` seconds) and say why it waits. `UsageLimitExceededError`,
        writing nothing, when a scope is halted or `spent + amount` is above a limit (no wait could help)."""
        ...

    def leave(self, ticket: str) -> None:
        """Drop `ticket` from every queue (a request admitted, refused or cancelled); nothing when it holds none."""
        ...


@runtime_checkable
class IdentifiedLedger(Protocol):
    """A ledger that knows its identity: a random id written with its tables when they are created. A ledger whose
    file or tables were deleted, replaced or restored shows another id, so a record of the id kept elsewhere (the
    Dagster instance keeps one) tells that the spend it held is lost."""

    @property
    def location(self) -> str:
        """Where the ledger is, for messages and as the key of its recorded id (a path, or a redacted URL and
        table names)."""
        ...

    def ledger_id(self) -> str:
        """The ledger's id; a ledger whose storage is gone is created again (with a new id) first."""
        ...


def new_ledger_id() -> str:
    """A fresh ledger id."""
    return uuid.uuid4().hex


def format_usd(usd_nanos: int) -> str:
    """Exact dollars for messages: 1_500_000_000 -> '$1.50', 1 -> '$0.000000001'."""
    sign = "-" if usd_nanos < 0 else ""
    whole, frac = divmod(abs(usd_nanos), USD_NANOS)
    digits = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{digits}"


def new_reservation_id() -> str:
    """A fresh, globally unique reservation id."""
    return uuid.uuid4().hex


def check_reservation_args(
    scope: str, limits: Limits, amount: Usage, run_id: str, step: str, dimensions: Mapping[str, str] | None = None
) -> None:
    """Reject arguments of the wrong type before any transaction starts."""
    if dimensions is not None and not (
        isinstance(dimensions, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in dimensions.items())
    ):
        raise TypeError(f"reserve: dimensions must map str to str, got {dimensions!r}")
    for name, value in (("scope", scope), ("run_id", run_id), ("step", step)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"reserve: {name} must be a non-empty string, got {value!r}")
    if not isinstance(limits, Limits):
        raise TypeError(f"reserve: limits must be a Limits, got {type(limits).__name__}")
    if not isinstance(amount, Usage):
        raise TypeError(f"reserve: amount must be a Usage, got {type(amount).__name__}")


def halted_reason(run_id: str, step: str, reserved: Usage, actual: Usage) -> str:
    """The reason stored when an overshoot halts a scope."""
    return (
        f"an overshoot at run {run_id!r} step {step!r} (reserved {format_usd(reserved.usd_nanos)} / "
        f"{reserved.tokens} tokens, actual {format_usd(actual.usd_nanos)} / {actual.tokens} tokens)"
    )


def halted_error(scope: str, reason: str | None, run_id: str, step: str) -> UsageLimitExceededError:
    """The error of a reserve in a halted scope."""
    return UsageLimitExceededError(
        f"Budget scope {scope!r} was halted by {reason or 'an overshoot'}; refused the request of run {run_id!r} "
        f"step {step!r}. Check that the provider honours max_tokens (a reservation is priced for the configured "
        f"model), then call resume({scope!r}) on the budget ledger."
    )


def limit_detail(limits: Limits, spent: Usage, reserved: Usage, amount: Usage) -> tuple[str, str] | None:
    """(the numbers, which Budget field to raise) when `spent + reserved + amount` exceeds a limit (money checked
    first), else None."""
    usd_total = spent.usd_nanos + reserved.usd_nanos + amount.usd_nanos
    if limits.max_usd_nanos is not None and usd_total > limits.max_usd_nanos:
        detail = (
            f"max_usd {format_usd(limits.max_usd_nanos)}, spent {format_usd(spent.usd_nanos)}, "
            f"reserved {format_usd(reserved.usd_nanos)}, requested {format_usd(amount.usd_nanos)} "
            f"(would total {format_usd(usd_total)})"
        )
        return detail, "the Budget's max_cost_usd"
    tokens_total = spent.tokens + reserved.tokens + amount.tokens
    if limits.max_tokens is None or tokens_total <= limits.max_tokens:
        return None
    detail = (
        f"max_tokens {limits.max_tokens}, spent {spent.tokens}, reserved {reserved.tokens}, "
        f"requested {amount.tokens} (would total {tokens_total})"
    )
    return detail, "the Budget's max_tokens"


def limit_error(
    scope: str,
    limits: Limits,
    spent: Usage,
    reserved: Usage,
    amount: Usage,
    *,
    run_id: str,
    step: str,
) -> UsageLimitExceededError | None:
    """The error when `spent + reserved + amount` exceeds a limit (money checked first), else None."""
    found = limit_detail(limits, spent, reserved, amount)
    if found is None:
        return None
    detail, what = found
    return UsageLimitExceededError(
        f"Budget of scope {scope!r} would be exceeded by run {run_id!r} step {step!r}: {detail}. "
        f"Nothing was reserved and the request did not start: raise {what} or lower the step's max_tokens."
    )


def is_overshoot(reserved: Usage, actual: Usage) -> bool:
    """Whether the actual cost exceeds the reservation in money or tokens."""
    return actual.usd_nanos > reserved.usd_nanos or actual.tokens > reserved.tokens


def unknown_reservation_message(reservation: Reservation, where: str) -> str:
    """The message when a reservation id is not in the ledger."""
    return (
        f"Reservation {reservation.id!r} (scope {reservation.scope!r}, run {reservation.run_id!r}, step "
        f"{reservation.step!r}) is not in the budget ledger at {where}: it was reserved in another ledger. "
        "Reconcile or release it with the ledger that reserved it."
    )


class PerThreadConnections(Generic[_C]):
    """One database connection per thread and process, opened on first use.

    A connection whose thread has finished is closed when the next one is opened (worker threads come and go). A
    connection inherited through fork belongs to the parent: the child opens its own and never uses nor closes it.
    """

    def __init__(self, open_: Callable[[], _C], close: Callable[[_C], None], usable: Callable[[_C], bool]) -> None:
        self._open = open_
        self._close = close
        self._usable = usable
        self._local = threading.local()
        self._lock = threading.Lock()
        self._owned: list[tuple[int, threading.Thread, _C]] = []
        self._inherited: list[_C] = []

    def get(self) -> _C:
        """This thread's connection, opened if it has none (or its own was closed)."""
        pid = os.getpid()
        held: tuple[int, _C] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == pid and self._usable(held[1]):
            return held[1]
        conn = self._open()
        replaced = None if held is None else held[1]
        self._local.held = (pid, conn)
        with self._lock:
            keep: list[tuple[int, threading.Thread, _C]] = []
            finished: list[_C] = []
            for owner, thread, owned in self._owned:
                if owner != pid:
                    self._inherited.append(owned)
                elif owned is replaced or not thread.is_alive():
                    finished.append(owned)
                else:
                    keep.append((owner, thread, owned))
            keep.append((pid, threading.current_thread(), conn))
            self._owned = keep
        for stale in finished:
            self._close(stale)
        return conn

    def close_all(self) -> None:
        """Close every connection opened in this process; each thread opens a new one on its next use."""
        pid = os.getpid()
        with self._lock:
            mine = [c for p, _, c in self._owned if p == pid]
            self._inherited.extend(c for p, _, c in self._owned if p != pid)
            self._owned = []
            self._local = threading.local()
        for conn in mine:
            self._close(conn)


def libpq_url(url: str) -> str:
    """`url` as psycopg2 takes it: a SQLAlchemy URL's driver suffix dropped (`postgresql+psycopg2://` is what
    dagster-postgres needs under SQLAlchemy 2.1, whose plain `postgresql://` means psycopg 3)."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    return f"{base}{sep}{rest}" if sep and base in ("postgresql", "postgres") else url
