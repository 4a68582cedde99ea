"""The budget ledger over SQL, written once: what `reserve`, `reconcile`, `release`, `recover`, `resume`, `totals`
and `entries` read and write, in which order, and what they decide from it.

A backend (`SqliteBudgetLedger`, `PostgresBudgetLedger`) subclasses `SqlBudgetLedger` and gives only its SQL
(`Statements`: named placeholders in its driver's style; rows of the columns `SCOPE_COLUMNS`, `ENTRY_COLUMNS` or
`LOCKED_ENTRY_COLUMNS` name) and how it connects and runs one transaction (`_write`, `_read`): which lock makes a
transaction's reads and writes exclusive, which errors it retries, and how driver errors become `StorageError`.

Every write takes its rows in one order, so that two transactions never wait on each other in a cycle: `reserve`
the scope row; `admit` its scope rows in name order, then ticket rows of those scopes; `reconcile` and `release`
the entry row, then its scope row; `recover` the run's open entry rows, then their scope rows in name order;
`leave` only its own ticket rows.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

from flujo_dagster.errors import StorageError
from flujo_dagster.pricing.ledger import (
    EntryState,
    LedgerEntry,
    Limits,
    PerThreadConnections,
    Reservation,
    ScopeTotals,
    Usage,
    Waiting,
    check_reservation_args,
    halted_error,
    halted_reason,
    is_overshoot,
    limit_detail,
    limit_error,
    new_reservation_id,
    unknown_reservation_message,
)

__all__ = ["ENTRY_COLUMNS", "LOCKED_ENTRY_COLUMNS", "SCOPE_COLUMNS", "Cursor", "SqlBudgetLedger", "Statements"]

_C = TypeVar("_C")
_T = TypeVar("_T")

SCOPE_COLUMNS = "spent_usd_nanos, spent_tokens, reserved_usd_nanos, reserved_tokens, overshoots, halted, halted_reason"
"""The columns of a scope row, in the order every statement returning one selects them."""

ENTRY_COLUMNS = (
    "id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, actual_usd_nanos, actual_tokens, state, "
    "overshoot, created_at, closed_at, dimensions"
)
"""The columns of an entry row, in the order every statement returning one selects them."""

LOCKED_ENTRY_COLUMNS = "id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, overshoot"
"""The columns of an entry row as a statement that locks it returns them: what closing it needs."""

_NOTHING = Usage(0, 0)

_ScopeRow = tuple[int, int, int, int, int, int | bool, str | None]
_EntryRow = tuple[
    str, str, str, str, int, int, int | None, int | None, EntryState, int | bool, float, float | None, str | None
]
_LockedRow = tuple[str, str, str, str, int, int, EntryState, int | bool]


class Cursor(Protocol):
    """What the shared logic uses of a DB-API cursor (sqlite3's and psycopg2's both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Mapping[str, object], /) -> object: ...

    def fetchone(self) -> object: ...

    def fetchall(self) -> Sequence[object]: ...


@dataclass(frozen=True)
class Statements:
    """The SQL of one backend. Each statement runs with a dict holding at least the named values listed; flags are
    the integers 0 and 1 (sqlite3 binds an exact int faster than a bool)."""

    placeholder: str
    """How the driver writes a named placeholder, with `{}` for the name: `:{}` or `%({})s`."""
    lock_scope: str
    """`scope` -> the scope's row (`SCOPE_COLUMNS`), or no row, held against other writers until the transaction
    ends."""
    reserve: tuple[str, ...]
    """`scope`, `id`, `run_id`, `step`, `usd`, `tokens`, `now`, `dimensions` (JSON text or NULL): add `usd`/`tokens` to
    the scope's reserved amounts
    (creating its row when missing) and insert the open entry; run in order."""
    lock_entry: str
    """`id` -> the entry's row (`LOCKED_ENTRY_COLUMNS`), or no row, held against other writers until the
    transaction ends."""
    lock_open_entries: str
    """`run_id` -> the rows (`LOCKED_ENTRY_COLUMNS`) of the run's entries in state 'reserved', held against other
    writers until the transaction ends."""
    close_entry: str
    """`id`, `state`, `actual_usd`, `actual_tokens` (NULL when nothing was spent), `overshoot`, `now`."""
    move_to_spent: str
    """`scope`, `usd`, `tokens` (taken off reserved), `spent_usd`, `spent_tokens` (added to spent), `overshoot`
    (1: add one to the count and halt the scope, storing `reason` when it was not halted yet)."""
    resume: str
    """`scope`: lift its halt, changing one row only when it was halted."""
    select_scope: str
    """`scope` -> the scope's row (`SCOPE_COLUMNS`), or no row."""
    select_entries: str
    """Every entry's row (`ENTRY_COLUMNS`; a `WHERE` may be appended)."""
    entries_order: str
    """The `ORDER BY` clause of `entries`: oldest first, then in insertion order."""
    clock: str
    """-> (the time now, in seconds since the epoch,), by the clock every process sharing the ledger reads."""
    ticket_head: str
    """`scope`, `now` -> (the ticket,) first in the scope's queue among those whose lease has not expired, or no
    row."""
    ticket_of: str
    """`ticket` -> (its number,), or no row when it holds no place in any queue."""
    next_ticket: str
    """-> (a ticket number above every one given before that is still in a queue,)."""
    hold_ticket: str
    """`ticket`, `scope`, `seq`, `expires`: queue the ticket in the scope, or renew its lease there."""
    drop_expired: str
    """`scope`, `now`: remove the scope's tickets whose lease has expired."""
    leave: str
    """`ticket`: remove the ticket from every queue."""

    def entries_where(self, columns: Sequence[str]) -> str:
        """Every entry's row whose `columns` equal the values of the same names, oldest first."""
        conditions = " AND ".join(f"{column} = {self.placeholder.format(column)}" for column in columns)
        return f"{self.select_entries}{f' WHERE {conditions}' if conditions else ''} {self.entries_order}"


def _scope_row(row: object) -> _ScopeRow | None:
    """A fetched scope row (`SCOPE_COLUMNS`), typed."""
    return cast(_ScopeRow | None, row)


def _locked_row(row: object) -> _LockedRow:
    """A fetched locked entry row (`LOCKED_ENTRY_COLUMNS`), typed."""
    return cast(_LockedRow, row)


def totals_from_row(scope: str, row: object) -> ScopeTotals:
    """A `ScopeTotals` from a scope row (`SCOPE_COLUMNS`), zeros when there is none."""
    typed = _scope_row(row)
    if typed is None:
        return ScopeTotals(scope, 0, 0, 0, 0, 0, False)
    spent_usd, spent_tokens, reserved_usd, reserved_tokens, overshoots, halted, reason = typed
    return ScopeTotals(scope, spent_usd, spent_tokens, reserved_usd, reserved_tokens, overshoots, bool(halted), reason)


def entry_from_row(row: object) -> LedgerEntry:
    """A `LedgerEntry` from an entry row (`ENTRY_COLUMNS`)."""
    entry_id, scope, run_id, step, res_usd, res_tokens, act_usd, act_tokens, state, overshoot, created, closed, dims = (
        cast(_EntryRow, row)
    )
    actual = None if act_usd is None or act_tokens is None else Usage(int(act_usd), int(act_tokens))
    return LedgerEntry(
        id=entry_id,
        scope=scope,
        run_id=run_id,
        step=step,
        reserved=Usage(int(res_usd), int(res_tokens)),
        actual=actual,
        state=state,
        overshoot=bool(overshoot),
        created_at=float(created),
        closed_at=None if closed is None else float(closed),
        dimensions=_dimensions(dims),
    )


def _dimensions(text: str | None) -> dict[str, str]:
    """An entry's dimensions from their stored JSON text (none when NULL or not a JSON object of strings)."""
    if text is None:
        return {}
    try:
        loaded = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {str(k): v for k, v in loaded.items() if isinstance(v, str)}


def _scope_usage(sql: Statements, cur: Cursor, scope: str, run_id: str, step: str) -> tuple[Usage, Usage]:
    """Lock the scope's row; (spent, reserved) there, or the error of a halted scope."""
    cur.execute(sql.lock_scope, {"scope": scope})
    row = _scope_row(cur.fetchone())
    if row is None:
        return _NOTHING, _NOTHING
    spent_usd, spent_tokens, reserved_usd, reserved_tokens, _, halted, reason = row
    if halted:
        raise halted_error(scope, reason, run_id, step)
    return Usage(spent_usd, spent_tokens), Usage(reserved_usd, reserved_tokens)


def _record(
    sql: Statements, cur: Cursor, reservation: Reservation, amount: Usage, dimensions: Mapping[str, str] | None
) -> None:
    """Add the reservation to its (locked) scope's reserved amounts and insert its open entry."""
    values = {
        "scope": reservation.scope,
        "id": reservation.id,
        "run_id": reservation.run_id,
        "step": reservation.step,
        "usd": amount.usd_nanos,
        "tokens": amount.tokens,
        "now": time.time(),
        "dimensions": json.dumps(dict(sorted(dimensions.items()))) if dimensions else None,
    }
    for statement in sql.reserve:
        cur.execute(statement, values)


def _reserve(
    sql: Statements,
    cur: Cursor,
    reservation: Reservation,
    limits: Limits,
    amount: Usage,
    dimensions: Mapping[str, str] | None,
) -> None:
    """Check the scope's halt and limits, then record the reservation (or raise, writing nothing)."""
    scope, run_id, step = reservation.scope, reservation.run_id, reservation.step
    spent, reserved = _scope_usage(sql, cur, scope, run_id, step)
    error = limit_error(scope, limits, spent, reserved, amount, run_id=run_id, step=step)
    if error is not None:
        raise error
    _record(sql, cur, reservation, amount, dimensions)


@dataclass(frozen=True)
class _Request:
    """One `admit` call: the reservations it would make (one per scope, in the order claimed) and their limits."""

    claims: Sequence[tuple[Reservation, Limits]]
    amount: Usage
    ticket: str
    lease_s: float
    dimensions: Mapping[str, str] | None


def _request(
    claims: Sequence[tuple[str, Limits]],
    amount: Usage,
    ticket: str,
    lease_s: float,
    run_id: str,
    step: str,
    dimensions: Mapping[str, str] | None,
) -> _Request:
    """The `admit` call's arguments, checked before any transaction starts."""
    scopes = [scope for scope, _ in claims]
    if not scopes or len(set(scopes)) != len(scopes) or not ticket or not lease_s > 0:
        raise ValueError(f"admit: claims must name distinct scopes, ticket and lease_s be set, got {claims!r}")
    for scope, limits in claims:
        check_reservation_args(scope, limits, amount, run_id, step, dimensions)
    made = [
        (Reservation(new_reservation_id(), s, run_id, step, amount.usd_nanos, amount.tokens), lim) for s, lim in claims
    ]
    return _Request(made, amount, ticket, lease_s, dimensions)


def _held_back(
    sql: Statements, cur: Cursor, request: _Request, reservation: Reservation, limits: Limits, now: float
) -> Waiting | None:
    """Why the request must wait in the (locked) reservation's scope, or None when it may reserve there now: a
    request that could never fit raises its scope's limit error; one that fits only once reservations in flight
    settle, or that an earlier live ticket is ahead of, waits."""
    scope, run_id, step = reservation.scope, reservation.run_id, reservation.step
    spent, reserved = _scope_usage(sql, cur, scope, run_id, step)
    hopeless = limit_error(scope, limits, spent, _NOTHING, request.amount, run_id=run_id, step=step)
    if hopeless is not None:
        raise hopeless  # it would not fit even with nothing in flight: the error names the limit that says so
    found = limit_detail(limits, spent, reserved, request.amount)
    if found is not None:
        return Waiting(scope, f"it fits only once requests in flight settle ({found[0]})")
    cur.execute(sql.ticket_head, {"scope": scope, "now": now})
    head = cur.fetchone()
    if head is not None and cast(tuple[str], head)[0] != request.ticket:
        return Waiting(scope, "an earlier request is still waiting there (first come, first served)")
    return None


def _hold(sql: Statements, cur: Cursor, request: _Request, scopes: Sequence[str], now: float) -> None:
    """Queue the request's ticket in each of `scopes` (keeping its number when it holds one), renewing its lease;
    expired tickets of those scopes are removed."""
    cur.execute(sql.ticket_of, {"ticket": request.ticket})
    row = cur.fetchone()
    if row is None:
        cur.execute(sql.next_ticket, {})
        row = cur.fetchone()
    seq = int(cast(tuple[int], row)[0])
    for scope in scopes:
        cur.execute(sql.drop_expired, {"scope": scope, "now": now})
        values = {"ticket": request.ticket, "scope": scope, "seq": seq, "expires": now + request.lease_s}
        cur.execute(sql.hold_ticket, values)


def _admit(sql: Statements, cur: Cursor, request: _Request) -> list[Reservation] | Waiting:
    """Reserve in every claimed scope, or none: see `AdmittingLedger.admit`."""
    cur.execute(sql.clock, {})
    now = float(cast(tuple[float], cur.fetchone())[0])
    ordered = sorted(request.claims, key=lambda claim: claim[0].scope)
    waiting: Waiting | None = None
    for reservation, limits in ordered:  # every scope is checked: a halted or hopeless one refuses at once
        held_back = _held_back(sql, cur, request, reservation, limits, now)
        waiting = waiting or held_back
    if waiting is not None:
        _hold(sql, cur, request, [reservation.scope for reservation, _ in ordered], now)
        return waiting
    for reservation, _ in ordered:
        _record(sql, cur, reservation, request.amount, request.dimensions)
    cur.execute(sql.leave, {"ticket": request.ticket})
    return [reservation for reservation, _ in request.claims]


def _close_entry(
    sql: Statements, cur: Cursor, entry_id: str, state: EntryState, actual: Usage | None, *, overshoot: bool, now: float
) -> None:
    """Mark the entry closed as `state` with `actual` spent (None: nothing)."""
    cur.execute(
        sql.close_entry,
        {
            "id": entry_id,
            "state": state,
            "actual_usd": None if actual is None else actual.usd_nanos,
            "actual_tokens": None if actual is None else actual.tokens,
            "overshoot": int(overshoot),
            "now": now,
        },
    )


def _move_to_spent(
    sql: Statements, cur: Cursor, scope: str, reserved: Usage, spent: Usage, *, halt_reason: str | None
) -> None:
    """Take `reserved` off the scope's reserved amounts and add `spent` to its spend; a `halt_reason` counts an
    overshoot and halts the scope (keeping the reason of an earlier halt)."""
    cur.execute(
        sql.move_to_spent,
        {
            "scope": scope,
            "usd": reserved.usd_nanos,
            "tokens": reserved.tokens,
            "spent_usd": spent.usd_nanos,
            "spent_tokens": spent.tokens,
            "overshoot": int(halt_reason is not None),
            "reason": halt_reason,
        },
    )


def _close(
    sql: Statements, cur: Cursor, reservation: Reservation, state: EntryState, actual: Usage | None, where: str
) -> bool:
    """Close an open reservation (reconciled to `actual`, or released when None); its overshoot flag. A closed one
    is left as it is, returning the flag recorded when it was closed."""
    cur.execute(sql.lock_entry, {"id": reservation.id})
    row = cur.fetchone()
    if row is None:
        raise StorageError(unknown_reservation_message(reservation, where))
    entry_id, scope, run_id, step, reserved_usd, reserved_tokens, current, overshot = _locked_row(row)
    if current != "reserved":
        return bool(overshot)
    reserved = Usage(reserved_usd, reserved_tokens)
    overshoot = actual is not None and is_overshoot(reserved, actual)
    spent = _NOTHING if actual is None else actual
    reason = halted_reason(run_id, step, reserved, spent) if overshoot else None
    _close_entry(sql, cur, entry_id, state, actual, overshoot=overshoot, now=time.time())
    _move_to_spent(sql, cur, scope, reserved, spent, halt_reason=reason)
    return overshoot


def _recover(sql: Statements, cur: Cursor, run_id: str) -> int:
    """Close the run's open entries as recovered, spent at their reserved amounts; how many."""
    cur.execute(sql.lock_open_entries, {"run_id": run_id})
    rows = cur.fetchall()
    now = time.time()
    sums: dict[str, tuple[int, int]] = {}
    for row in rows:
        entry_id, scope, _, _, reserved_usd, reserved_tokens, _, _ = _locked_row(row)
        _close_entry(sql, cur, entry_id, "recovered", Usage(reserved_usd, reserved_tokens), overshoot=False, now=now)
        usd, tokens = sums.get(scope, (0, 0))
        sums[scope] = (usd + reserved_usd, tokens + reserved_tokens)
    for scope in sorted(sums):
        amount = Usage(*sums[scope])
        _move_to_spent(sql, cur, scope, amount, amount, halt_reason=None)
    return len(rows)


class SqlBudgetLedger(ABC, Generic[_C]):
    """A `BudgetLedger` in SQL tables; a subclass gives its `Statements` and transactions. Usable from any number
    of threads and processes at once: each thread of each process gets its own connection, opened on first use."""

    def __init__(self, statements: Statements, where: str, connections: PerThreadConnections[_C]) -> None:
        self._sql = statements
        self._where = where
        self._connections = connections

    @abstractmethod
    def _write(self, body: Callable[[Cursor], _T]) -> _T:
        """Run `body` in one transaction whose reads and writes no other writer interleaves with: committed when
        it returns, rolled back when it raises; driver errors are raised as `StorageError`."""

    def _read(self, body: Callable[[Cursor], _T]) -> _T:
        """Run the read-only `body` (by default like `_write`)."""
        return self._write(body)

    def _connection(self) -> _C:
        return self._connections.get()

    @property
    def location(self) -> str:
        """Where the ledger is: its file, or its database (password redacted) and tables."""
        return self._where

    @abstractmethod
    def ledger_id(self) -> str:
        """The ledger's id, written with its tables; a ledger whose storage is gone is created again first."""

    def close(self) -> None:
        """Close every connection this object opened in this process; it reconnects if used again."""
        self._connections.close_all()

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
        """Reserve `amount` in `scope` (see `BudgetLedger.reserve`), recording `dimensions` with the entry."""
        check_reservation_args(scope, limits, amount, run_id, step, dimensions)
        reservation = Reservation(new_reservation_id(), scope, run_id, step, amount.usd_nanos, amount.tokens)
        self._write(lambda cur: _reserve(self._sql, cur, reservation, limits, amount, dimensions))
        return reservation

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
        """Reserve `amount` in every scope of `claims`, first come first served (see `AdmittingLedger.admit`)."""
        request = _request(claims, amount, ticket, lease_s, run_id, step, dimensions)
        return self._write(lambda cur: _admit(self._sql, cur, request))

    def leave(self, ticket: str) -> None:
        """Drop `ticket` from every queue."""
        self._write(lambda cur: cur.execute(self._sql.leave, {"ticket": ticket}))

    def reconcile(self, reservation: Reservation, actual: Usage) -> bool:
        """Record the actual spend of an open reservation; True on an overshoot, which halts the scope.

        Idempotent: on an already closed reservation it changes nothing and returns the flag first recorded.
        """
        if not isinstance(actual, Usage):
            raise TypeError(f"reconcile: actual must be a Usage, got {type(actual).__name__}")
        return self._write(lambda cur: _close(self._sql, cur, reservation, "reconciled", actual, self._where))

    def release(self, reservation: Reservation) -> None:
        """Close an open reservation with no spend. Idempotent: a closed reservation is left as it is."""
        self._write(lambda cur: _close(self._sql, cur, reservation, "released", None, self._where))

    def recover(self, run_id: str) -> int:
        """Close the open reservations of `run_id` as "recovered", spent at their reserved amount; how many.

        Call it only once no process of that run is running (e.g. when the run failed or is re-executed).
        """
        return self._write(lambda cur: _recover(self._sql, cur, run_id))

    def resume(self, scope: str) -> bool:
        """Lift the halt of `scope` (spend and overshoot count stay); True when it was halted."""

        def body(cur: Cursor) -> bool:
            cur.execute(self._sql.resume, {"scope": scope})
            return cur.rowcount > 0

        return self._write(body)

    def totals(self, scope: str) -> ScopeTotals:
        """The counters of `scope` (zeros for a scope never used)."""

        def body(cur: Cursor) -> ScopeTotals:
            cur.execute(self._sql.select_scope, {"scope": scope})
            return totals_from_row(scope, cur.fetchone())

        return self._read(body)

    def entries(self, *, run_id: str | None = None, scope: str | None = None) -> list[LedgerEntry]:
        """Every entry, optionally of one run and/or scope, oldest first."""
        values = {"run_id": run_id, "scope": scope}
        query = self._sql.entries_where([name for name, value in values.items() if value is not None])

        def body(cur: Cursor) -> list[LedgerEntry]:
            cur.execute(query, values)
            return [entry_from_row(row) for row in cur.fetchall()]

        return self._read(body)
