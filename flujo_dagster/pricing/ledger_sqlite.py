"""The budget ledger in one SQLite file (the default): atomic across threads and processes of one machine.

Every write is one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before reading, so a check and the
write that follows it see no other writer in between, in this process or any other. The file is in WAL mode with
`synchronous=NORMAL`: a committed transaction survives the crash of any process (it is in the WAL), while the last
transactions before an operating-system crash or power loss may be lost; pass `synchronous="FULL"` to fsync every
commit instead (slower). Each thread of each process gets its own connection, opened on first use
(sqlite3 connections are not shared across threads); the schema is set up once, when the object is made.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar, cast

from flujo_dagster.errors import StorageError
from flujo_dagster.pricing.ledger import (
    EntryRow,
    EntryState,
    LedgerEntry,
    Limits,
    PerThreadConnections,
    Reservation,
    ScopeTotals,
    Usage,
    check_reservation_args,
    entry_from_row,
    halted_error,
    halted_reason,
    is_overshoot,
    limit_error,
    new_reservation_id,
    unknown_reservation_message,
)

__all__ = ["SqliteBudgetLedger"]

_T = TypeVar("_T")

SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS flujo_budget_scopes (
        scope TEXT PRIMARY KEY,
        spent_usd_nanos INTEGER NOT NULL DEFAULT 0,
        spent_tokens INTEGER NOT NULL DEFAULT 0,
        reserved_usd_nanos INTEGER NOT NULL DEFAULT 0,
        reserved_tokens INTEGER NOT NULL DEFAULT 0,
        overshoots INTEGER NOT NULL DEFAULT 0,
        halted INTEGER NOT NULL DEFAULT 0,
        halted_reason TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS flujo_budget_entries (
        id TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        run_id TEXT NOT NULL,
        step TEXT NOT NULL,
        reserved_usd_nanos INTEGER NOT NULL,
        reserved_tokens INTEGER NOT NULL,
        actual_usd_nanos INTEGER,
        actual_tokens INTEGER,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'reconciled', 'released', 'recovered')),
        overshoot INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        closed_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS flujo_budget_entries_run_id ON flujo_budget_entries (run_id, state)",
    "CREATE INDEX IF NOT EXISTS flujo_budget_entries_scope ON flujo_budget_entries (scope)",
)

_SELECT_SCOPE = (
    "SELECT spent_usd_nanos, spent_tokens, reserved_usd_nanos, reserved_tokens, overshoots, halted, halted_reason "
    "FROM flujo_budget_scopes WHERE scope = ?"
)
_RESERVE_SCOPE = (
    "INSERT INTO flujo_budget_scopes (scope, reserved_usd_nanos, reserved_tokens) VALUES (?, ?, ?) "
    "ON CONFLICT (scope) DO UPDATE SET reserved_usd_nanos = reserved_usd_nanos + excluded.reserved_usd_nanos, "
    "reserved_tokens = reserved_tokens + excluded.reserved_tokens"
)
_INSERT_ENTRY = (
    "INSERT INTO flujo_budget_entries (id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?, 'reserved', ?)"
)
_SELECT_ENTRY = (
    "SELECT scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, overshoot "
    "FROM flujo_budget_entries WHERE id = ?"
)
_CLOSE_ENTRY = (
    "UPDATE flujo_budget_entries SET state = ?, actual_usd_nanos = ?, actual_tokens = ?, overshoot = ?, "
    "closed_at = ? WHERE id = ?"
)
_MOVE_TO_SPENT = (
    "UPDATE flujo_budget_scopes SET reserved_usd_nanos = reserved_usd_nanos - ?, reserved_tokens = reserved_tokens - ?,"
    " spent_usd_nanos = spent_usd_nanos + ?, spent_tokens = spent_tokens + ?, overshoots = overshoots + ?,"
    " halted_reason = CASE WHEN halted = 0 AND ? THEN ? ELSE halted_reason END,"
    " halted = CASE WHEN ? THEN 1 ELSE halted END WHERE scope = ?"
)
_OPEN_OF_RUN = (
    "SELECT scope, SUM(reserved_usd_nanos), SUM(reserved_tokens), COUNT(*) FROM flujo_budget_entries "
    "WHERE run_id = ? AND state = 'reserved' GROUP BY scope ORDER BY scope"
)
_RECOVER_RUN = (
    "UPDATE flujo_budget_entries SET state = 'recovered', actual_usd_nanos = reserved_usd_nanos, "
    "actual_tokens = reserved_tokens, closed_at = ? WHERE run_id = ? AND state = 'reserved'"
)
_ENTRY_COLUMNS = (
    "SELECT id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, actual_usd_nanos, actual_tokens, state, "
    "overshoot, created_at, closed_at FROM flujo_budget_entries"
)


def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


class SqliteBudgetLedger:
    """A `BudgetLedger` in the SQLite file at `path` (created, with its parent folders, when missing).

    `busy_timeout_s` bounds how long one operation waits for another process's write transaction before it
    raises `StorageError`. Usable from any number of threads and processes at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 30.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self._connections = PerThreadConnections(self._open, sqlite3.Connection.close, lambda _: True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"Cannot create the folder of the budget ledger {str(self.path)!r}: {exc}. "
                "Choose a ledger path in a writable folder."
            ) from exc
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    # connections -----------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        return conn

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def close(self) -> None:
        """Close every connection this object opened in this process; it reconnects if used again."""
        self._connections.close_all()

    def _storage_error(self, exc: sqlite3.Error) -> StorageError:
        if _is_busy(exc):
            return StorageError(
                f"The budget ledger {str(self.path)!r} stayed locked by another process for more than "
                f"{self.busy_timeout_s} s ({exc}). Look for a hung process holding it, or raise busy_timeout_s."
            )
        return StorageError(
            f"The budget ledger {str(self.path)!r} cannot be used: {exc}. Check that the file is a flujo_dagster "
            "budget ledger (SQLite) and is readable and writable, or point the ledger at a new file."
        )

    def _init_schema(self) -> None:
        # Reads first: a ledger already set up opens without waiting for another process's write lock.
        conn = self._connection()
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL fails at once, without waiting, while another process opens it.
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise self._storage_error(exc) from exc
                time.sleep(0.005)
            except sqlite3.Error as exc:
                raise self._storage_error(exc) from exc
        if version == SCHEMA_VERSION:
            return

        def create(conn: sqlite3.Connection) -> None:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"The budget ledger {str(self.path)!r} has schema version {version}, newer than this "
                    f"flujo_dagster understands ({SCHEMA_VERSION}). Upgrade flujo_dagster or use another file."
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        self._write(create)

    def _write(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `body` in one BEGIN IMMEDIATE transaction: committed when it returns, rolled back when it raises."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._storage_error(exc) from exc
            raise
        return result

    def _read(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return body(self._connection())
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc

    # the ledger ------------------------------------------------------------------------------------------------

    def reserve(self, scope: str, limits: Limits, amount: Usage, *, run_id: str, step: str) -> Reservation:
        """Reserve `amount` in `scope` (see `BudgetLedger.reserve`)."""
        check_reservation_args(scope, limits, amount, run_id, step)
        reservation = Reservation(new_reservation_id(), scope, run_id, step, amount.usd_nanos, amount.tokens)

        def body(conn: sqlite3.Connection) -> None:
            row = conn.execute(_SELECT_SCOPE, (scope,)).fetchone()
            if row is not None:
                spent_usd, spent_tokens, reserved_usd, reserved_tokens, _, halted, reason = row
                if halted:
                    raise halted_error(scope, reason, run_id, step)
                spent, reserved = Usage(spent_usd, spent_tokens), Usage(reserved_usd, reserved_tokens)
            else:
                spent = reserved = Usage(0, 0)
            error = limit_error(scope, limits, spent, reserved, amount, run_id=run_id, step=step)
            if error is not None:
                raise error
            conn.execute(_RESERVE_SCOPE, (scope, amount.usd_nanos, amount.tokens))
            conn.execute(
                _INSERT_ENTRY, (reservation.id, scope, run_id, step, amount.usd_nanos, amount.tokens, time.time())
            )

        self._write(body)
        return reservation

    def _close_entry(self, reservation: Reservation, state: EntryState, actual: Usage | None) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_SELECT_ENTRY, (reservation.id,)).fetchone()
            if row is None:
                raise StorageError(unknown_reservation_message(reservation, repr(str(self.path))))
            scope, run_id, step, reserved_usd, reserved_tokens, current, overshot = row
            if current != "reserved":
                return bool(overshot)
            reserved = Usage(reserved_usd, reserved_tokens)
            spend = actual if actual is not None else Usage(0, 0)
            overshoot = actual is not None and is_overshoot(reserved, actual)
            reason = halted_reason(run_id, step, reserved, spend) if overshoot else None
            conn.execute(
                _CLOSE_ENTRY,
                (
                    state,
                    None if actual is None else actual.usd_nanos,
                    None if actual is None else actual.tokens,
                    int(overshoot),
                    time.time(),
                    reservation.id,
                ),
            )
            conn.execute(
                _MOVE_TO_SPENT,
                (
                    reserved.usd_nanos,
                    reserved.tokens,
                    spend.usd_nanos,
                    spend.tokens,
                    int(overshoot),
                    int(overshoot),
                    reason,
                    int(overshoot),
                    scope,
                ),
            )
            return overshoot

        return self._write(body)

    def reconcile(self, reservation: Reservation, actual: Usage) -> bool:
        """Record the actual spend of an open reservation; True on an overshoot, which halts the scope.

        Idempotent: on an already closed reservation it changes nothing and returns the flag first recorded.
        """
        if not isinstance(actual, Usage):
            raise TypeError(f"reconcile: actual must be a Usage, got {type(actual).__name__}")
        return self._close_entry(reservation, "reconciled", actual)

    def release(self, reservation: Reservation) -> None:
        """Close an open reservation with no spend. Idempotent: a closed reservation is left as it is."""
        self._close_entry(reservation, "released", None)

    def recover(self, run_id: str) -> int:
        """Close the open reservations of `run_id` as "recovered", spent at their reserved amount; how many.

        Call it only once no process of that run is running (e.g. when the run failed or is re-executed).
        """

        def body(conn: sqlite3.Connection) -> int:
            groups = conn.execute(_OPEN_OF_RUN, (run_id,)).fetchall()
            if not groups:
                return 0
            conn.execute(_RECOVER_RUN, (time.time(), run_id))
            for scope, usd, tokens, _ in groups:
                conn.execute(_MOVE_TO_SPENT, (usd, tokens, usd, tokens, 0, 0, None, 0, scope))
            return sum(int(count) for *_, count in groups)

        return self._write(body)

    def resume(self, scope: str) -> bool:
        """Lift the halt of `scope` (spend and overshoot count stay); True when it was halted."""

        def body(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE flujo_budget_scopes SET halted = 0, halted_reason = NULL WHERE scope = ? AND halted = 1",
                (scope,),
            )
            return cursor.rowcount > 0

        return self._write(body)

    def totals(self, scope: str) -> ScopeTotals:
        """The counters of `scope` (zeros for a scope never used)."""
        row = self._read(lambda conn: conn.execute(_SELECT_SCOPE, (scope,)).fetchone())
        if row is None:
            return ScopeTotals(scope, 0, 0, 0, 0, 0, False)
        spent_usd, spent_tokens, reserved_usd, reserved_tokens, overshoots, halted, reason = row
        return ScopeTotals(
            scope, spent_usd, spent_tokens, reserved_usd, reserved_tokens, overshoots, bool(halted), reason
        )

    def entries(self, *, run_id: str | None = None, scope: str | None = None) -> list[LedgerEntry]:
        """Every entry, optionally of one run and/or scope, oldest first."""
        conditions: list[str] = []
        params: list[str] = []
        if run_id is not None:
            conditions.append("run_id = ?")
            params.append(run_id)
        if scope is not None:
            conditions.append("scope = ?")
            params.append(scope)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"{_ENTRY_COLUMNS}{where} ORDER BY created_at, rowid"
        rows = cast(list[EntryRow], self._read(lambda conn: conn.execute(query, params).fetchall()))
        return [entry_from_row(row) for row in rows]
