"""The budget ledger in PostgreSQL (optional extra `postgres`): atomic across processes of many machines.

Every write is one transaction. `reserve` first makes sure the scope's row exists (`INSERT ... ON CONFLICT DO
NOTHING`), then locks it (`SELECT ... FOR UPDATE`): concurrent reservations of one scope queue on that row lock, so
the limit check and the write that follows it see no other writer in between. `reconcile` and `release` lock the
entry row, then update the scope row; `recover` updates the run's open entries, then their scopes in name order, so
two transactions never wait on each other in a cycle. A transaction that still meets a deadlock or a serialization
failure is rolled back and retried. Each thread of each process gets its own connection, opened on first use.
Tables are created when missing, named `<table_prefix>scopes` and `<table_prefix>entries`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions

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

__all__ = ["PostgresBudgetLedger", "redact_url"]

_T = TypeVar("_T")
_Cursor = psycopg2.extensions.cursor

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_RETRIES = 5
_TRANSIENT = (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)


def _detail(exc: BaseException) -> str:
    """The driver's message on one line."""
    return " ".join(str(exc).split())


def _is_open(conn: psycopg2.extensions.connection) -> bool:
    return not conn.closed


def redact_url(url: str) -> str:
    """The URL with its password, if any, replaced by `***` (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class PostgresBudgetLedger:
    """A `BudgetLedger` in the PostgreSQL database at `url` (libpq URL, e.g. `postgresql://user@host:5432/db`).

    `table_prefix` names the tables (lowercase letters, digits, underscores). `connect_timeout_s` bounds how long
    connecting may take; `lock_timeout_s` how long one operation waits for a row another session holds before it
    raises `StorageError`. Usable from any number of threads and processes at once.
    """

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "flujo_budget_",
        connect_timeout_s: int = 10,
        lock_timeout_s: float = 30.0,
    ) -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError(
                f"table_prefix {table_prefix!r} is not allowed: use 1 to 40 lowercase letters, digits or "
                "underscores, starting with a letter or underscore"
            )
        self.url = url
        self.table_prefix = table_prefix
        self.connect_timeout_s = connect_timeout_s
        self.lock_timeout_s = lock_timeout_s
        self._where = f"PostgreSQL {redact_url(url)} (tables {table_prefix}scopes, {table_prefix}entries)"
        self._connections = PerThreadConnections(self._open, psycopg2.extensions.connection.close, _is_open)
        scopes, entries = f"{table_prefix}scopes", f"{table_prefix}entries"
        self._schema = f"""CREATE TABLE IF NOT EXISTS {scopes} (
                scope TEXT PRIMARY KEY,
                spent_usd_nanos BIGINT NOT NULL DEFAULT 0,
                spent_tokens BIGINT NOT NULL DEFAULT 0,
                reserved_usd_nanos BIGINT NOT NULL DEFAULT 0,
                reserved_tokens BIGINT NOT NULL DEFAULT 0,
                overshoots BIGINT NOT NULL DEFAULT 0,
                halted BOOLEAN NOT NULL DEFAULT FALSE,
                halted_reason TEXT
            );
            CREATE TABLE IF NOT EXISTS {entries} (
                id TEXT PRIMARY KEY,
                scope TEXT NOT NULL,
                run_id TEXT NOT NULL,
                step TEXT NOT NULL,
                reserved_usd_nanos BIGINT NOT NULL,
                reserved_tokens BIGINT NOT NULL,
                actual_usd_nanos BIGINT,
                actual_tokens BIGINT,
                state TEXT NOT NULL CHECK (state IN ('reserved', 'reconciled', 'released', 'recovered')),
                overshoot BOOLEAN NOT NULL DEFAULT FALSE,
                seq BIGSERIAL,
                created_at DOUBLE PRECISION NOT NULL,
                closed_at DOUBLE PRECISION
            );
            CREATE INDEX IF NOT EXISTS {entries}_run_id ON {entries} (run_id, state);
            CREATE INDEX IF NOT EXISTS {entries}_scope ON {entries} (scope);"""
        self._lock_scope = (
            f"INSERT INTO {scopes} (scope) VALUES (%s) ON CONFLICT (scope) DO NOTHING; "
            f"SELECT spent_usd_nanos, spent_tokens, reserved_usd_nanos, reserved_tokens, halted, halted_reason "
            f"FROM {scopes} WHERE scope = %s FOR UPDATE"
        )
        self._reserve = (
            f"UPDATE {scopes} SET reserved_usd_nanos = reserved_usd_nanos + %s, "
            f"reserved_tokens = reserved_tokens + %s WHERE scope = %s; "
            f"INSERT INTO {entries} (id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, created_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s, 'reserved', %s)"
        )
        self._select_entry = (
            f"SELECT scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, overshoot "
            f"FROM {entries} WHERE id = %s FOR UPDATE"
        )
        self._close_entry_sql = (
            f"UPDATE {entries} SET state = %s, actual_usd_nanos = %s, actual_tokens = %s, overshoot = %s, "
            f"closed_at = %s WHERE id = %s"
        )
        self._move_to_spent = (
            f"UPDATE {scopes} SET reserved_usd_nanos = reserved_usd_nanos - %s, "
            f"reserved_tokens = reserved_tokens - %s, spent_usd_nanos = spent_usd_nanos + %s, "
            f"spent_tokens = spent_tokens + %s, overshoots = overshoots + %s, "
            f"halted_reason = CASE WHEN NOT halted AND %s THEN %s ELSE halted_reason END, "
            f"halted = halted OR %s WHERE scope = %s"
        )
        self._recover_run = (
            f"UPDATE {entries} SET state = 'recovered', actual_usd_nanos = reserved_usd_nanos, "
            f"actual_tokens = reserved_tokens, closed_at = %s WHERE run_id = %s AND state = 'reserved' "
            f"RETURNING scope, reserved_usd_nanos, reserved_tokens"
        )
        self._resume = f"UPDATE {scopes} SET halted = FALSE, halted_reason = NULL WHERE scope = %s AND halted"
        self._select_scope = (
            f"SELECT spent_usd_nanos, spent_tokens, reserved_usd_nanos, reserved_tokens, overshoots, halted, "
            f"halted_reason FROM {scopes} WHERE scope = %s"
        )
        self._entry_columns = (
            f"SELECT id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, actual_usd_nanos, actual_tokens, "
            f"state, overshoot, created_at, closed_at FROM {entries}"
        )
        try:
            self._transaction(self._create_tables)
        except BaseException:
            self.close()
            raise

    # connections -----------------------------------------------------------------------------------------------

    def _open(self) -> psycopg2.extensions.connection:
        try:
            conn = psycopg2.connect(self.url, connect_timeout=self.connect_timeout_s)
        except psycopg2.Error as exc:
            raise StorageError(
                f"Cannot connect to the budget ledger in {self._where} ({_detail(exc)}). Check that the server "
                "is running and reachable and that the URL's user, password and database are right."
            ) from exc
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{round(self.lock_timeout_s * 1000)}ms",))
            conn.commit()
        except psycopg2.Error as exc:
            conn.close()
            raise StorageError(
                f"Cannot set lock_timeout on the budget ledger's connection to {self._where} ({_detail(exc)}). "
                "Check the server's configuration."
            ) from exc
        return conn

    def _connection(self) -> psycopg2.extensions.connection:
        return self._connections.get()

    def close(self) -> None:
        """Close every connection this object opened in this process; it reconnects if used again."""
        self._connections.close_all()

    def _create_tables(self, cur: _Cursor) -> None:
        # Only when something is missing: CREATE INDEX IF NOT EXISTS locks the table against writers even when the
        # index exists. Concurrent creations can collide in the catalog: they are serialized on an advisory lock.
        names = [f"{self.table_prefix}{name}" for name in ("scopes", "entries", "entries_run_id", "entries_scope")]
        cur.execute("SELECT to_regclass(%s), to_regclass(%s), to_regclass(%s), to_regclass(%s)", names)
        row = cur.fetchone()
        if row is not None and all(oid is not None for oid in row):
            return
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"flujo_dagster.ledger.{self.table_prefix}",))
        cur.execute(self._schema)

    def _transaction(self, body: Callable[[_Cursor], _T]) -> _T:
        """Run `body` in one transaction: committed when it returns, rolled back when it raises; a deadlock or a
        serialization failure is retried (the rolled-back transaction wrote nothing)."""
        for attempt in range(_RETRIES):
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    result = body(cur)
                conn.commit()
                return result
            except _TRANSIENT as exc:
                conn.rollback()
                if attempt == _RETRIES - 1:
                    raise StorageError(
                        f"The budget ledger in {self._where} kept failing on lock conflicts ({exc}). Retry later."
                    ) from exc
            except psycopg2.errors.LockNotAvailable as exc:
                conn.rollback()
                raise StorageError(
                    f"The budget ledger in {self._where} stayed locked by another session for more than "
                    f"{self.lock_timeout_s} s. Look for a hung process or an idle transaction holding it "
                    "(pg_stat_activity), or raise lock_timeout_s."
                ) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                conn.close()
                raise StorageError(
                    f"Lost the connection to the budget ledger in {self._where} ({_detail(exc)}). The operation "
                    "may or may not have been committed; check the server, then look at the ledger's entries."
                ) from exc
            except psycopg2.Error as exc:
                conn.rollback()
                raise StorageError(
                    f"The budget ledger in {self._where} cannot be used ({_detail(exc)}). Check that these tables "
                    "are a flujo_dagster budget ledger and the user may write them, or choose another table_prefix."
                ) from exc
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # the ledger ------------------------------------------------------------------------------------------------

    def reserve(self, scope: str, limits: Limits, amount: Usage, *, run_id: str, step: str) -> Reservation:
        """Reserve `amount` in `scope` (see `BudgetLedger.reserve`)."""
        check_reservation_args(scope, limits, amount, run_id, step)
        reservation = Reservation(new_reservation_id(), scope, run_id, step, amount.usd_nanos, amount.tokens)

        def body(cur: _Cursor) -> None:
            cur.execute(self._lock_scope, (scope, scope))
            row = cur.fetchone()
            assert row is not None  # the row was inserted just above if missing
            spent_usd, spent_tokens, reserved_usd, reserved_tokens, halted, reason = row
            if halted:
                raise halted_error(scope, reason, run_id, step)
            spent, reserved = Usage(spent_usd, spent_tokens), Usage(reserved_usd, reserved_tokens)
            error = limit_error(scope, limits, spent, reserved, amount, run_id=run_id, step=step)
            if error is not None:
                raise error
            cur.execute(
                self._reserve,
                (
                    amount.usd_nanos,
                    amount.tokens,
                    scope,
                    reservation.id,
                    scope,
                    run_id,
                    step,
                    amount.usd_nanos,
                    amount.tokens,
                    time.time(),
                ),
            )

        self._transaction(body)
        return reservation

    def _close_entry(self, reservation: Reservation, state: EntryState, actual: Usage | None) -> bool:
        def body(cur: _Cursor) -> bool:
            cur.execute(self._select_entry, (reservation.id,))
            row = cur.fetchone()
            if row is None:
                raise StorageError(unknown_reservation_message(reservation, self._where))
            scope, run_id, step, reserved_usd, reserved_tokens, current, overshot = row
            if current != "reserved":
                return bool(overshot)
            reserved = Usage(reserved_usd, reserved_tokens)
            spend = actual if actual is not None else Usage(0, 0)
            overshoot = actual is not None and is_overshoot(reserved, actual)
            reason = halted_reason(run_id, step, reserved, spend) if overshoot else None
            cur.execute(
                self._close_entry_sql,
                (
                    state,
                    None if actual is None else actual.usd_nanos,
                    None if actual is None else actual.tokens,
                    overshoot,
                    time.time(),
                    reservation.id,
                ),
            )
            cur.execute(
                self._move_to_spent,
                (
                    reserved.usd_nanos,
                    reserved.tokens,
                    spend.usd_nanos,
                    spend.tokens,
                    int(overshoot),
                    overshoot,
                    reason,
                    overshoot,
                    scope,
                ),
            )
            return overshoot

        return self._transaction(body)

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

        def body(cur: _Cursor) -> int:
            cur.execute(self._recover_run, (time.time(), run_id))
            sums: dict[str, tuple[int, int]] = {}
            rows = cur.fetchall()
            for scope, usd, tokens in rows:
                old_usd, old_tokens = sums.get(scope, (0, 0))
                sums[scope] = (old_usd + usd, old_tokens + tokens)
            for scope in sorted(sums):
                usd, tokens = sums[scope]
                cur.execute(self._move_to_spent, (usd, tokens, usd, tokens, 0, False, None, False, scope))
            return len(rows)

        return self._transaction(body)

    def resume(self, scope: str) -> bool:
        """Lift the halt of `scope` (spend and overshoot count stay); True when it was halted."""

        def body(cur: _Cursor) -> bool:
            cur.execute(self._resume, (scope,))
            return cur.rowcount > 0

        return self._transaction(body)

    def totals(self, scope: str) -> ScopeTotals:
        """The counters of `scope` (zeros for a scope never used)."""

        def body(cur: _Cursor) -> ScopeTotals:
            cur.execute(self._select_scope, (scope,))
            row = cur.fetchone()
            if row is None:
                return ScopeTotals(scope, 0, 0, 0, 0, 0, False)
            spent_usd, spent_tokens, reserved_usd, reserved_tokens, overshoots, halted, reason = row
            return ScopeTotals(
                scope, spent_usd, spent_tokens, reserved_usd, reserved_tokens, overshoots, bool(halted), reason
            )

        return self._transaction(body)

    def entries(self, *, run_id: str | None = None, scope: str | None = None) -> list[LedgerEntry]:
        """Every entry, optionally of one run and/or scope, oldest first."""
        conditions: list[str] = []
        params: list[str] = []
        if run_id is not None:
            conditions.append("run_id = %s")
            params.append(run_id)
        if scope is not None:
            conditions.append("scope = %s")
            params.append(scope)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        query = f"{self._entry_columns}{where} ORDER BY created_at, seq"

        def body(cur: _Cursor) -> list[LedgerEntry]:
            cur.execute(query, params)
            return [entry_from_row(cast(EntryRow, row)) for row in cur.fetchall()]

        return self._transaction(body)
