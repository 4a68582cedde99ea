"""The budget ledger in PostgreSQL (optional extra `postgres`): atomic across processes of many machines.

Every write is one transaction. `reserve` first makes sure the scope's row exists (`INSERT ... ON CONFLICT DO
NOTHING`), then locks it (`SELECT ... FOR UPDATE`): concurrent reservations of one scope queue on that row lock, so
the limit check and the write that follows it see no other writer in between. `reconcile` and `release` lock the
entry row, then update the scope row; `recover` locks the run's open entries, then updates them and their scopes in
name order, so two transactions never wait on each other in a cycle. A transaction that still meets a deadlock or a
serialization failure is rolled back and retried. Each thread of each process gets its own connection, opened on
first use. Tables are created when missing, named `<table_prefix>scopes`, `<table_prefix>entries`,
`<table_prefix>meta` (the ledger's id) and `<table_prefix>tickets` (requests waiting for admission, numbered by the
sequence `<table_prefix>tickets_seq`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from flujo_dagster.dsl.durations import duration
from flujo_dagster.errors import StorageError
from flujo_dagster.pricing.ledger import PerThreadConnections, libpq_url, new_ledger_id
from flujo_dagster.pricing.ledger_sql import (
    ENTRY_COLUMNS,
    LOCKED_ENTRY_COLUMNS,
    SCOPE_COLUMNS,
    SqlBudgetLedger,
    Statements,
)

__all__ = ["PostgresBudgetLedger", "libpq_url", "redact_url"]

_T = TypeVar("_T")
_Connection = psycopg2.extensions.connection
_Cursor = psycopg2.extensions.cursor

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_RETRIES = 5
_TRANSIENT = (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure)


def _detail(exc: BaseException) -> str:
    """The driver's message on one line."""
    return " ".join(str(exc).split())


def _is_open(conn: _Connection) -> bool:
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


def _schema(scopes: str, entries: str, meta: str, tickets: str) -> str:
    """The tables and indexes, created when missing; the meta table holds the ledger's id."""
    return f"""CREATE TABLE IF NOT EXISTS {scopes} (
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
            closed_at DOUBLE PRECISION,
            dimensions TEXT
        );
        ALTER TABLE {entries} ADD COLUMN IF NOT EXISTS dimensions TEXT;
        CREATE INDEX IF NOT EXISTS {entries}_run_id ON {entries} (run_id, state);
        CREATE INDEX IF NOT EXISTS {entries}_scope ON {entries} (scope);
        CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO {meta} (key, value) VALUES ('ledger_id', %(ledger_id)s) ON CONFLICT (key) DO NOTHING;
        CREATE TABLE IF NOT EXISTS {tickets} (
            ticket TEXT NOT NULL,
            scope TEXT NOT NULL,
            seq BIGINT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (ticket, scope)
        );
        CREATE INDEX IF NOT EXISTS {tickets}_queue ON {tickets} (scope, seq);
        CREATE SEQUENCE IF NOT EXISTS {tickets}_seq;"""


def _statements(scopes: str, entries: str, tickets: str) -> Statements:
    """The ledger's SQL on the tables `scopes` and `entries`. Rows are held by `FOR UPDATE` row locks."""
    return Statements(
        placeholder="%({})s",
        # the row exists first (a refused reserve's insert is rolled back with it), so that the lock can be taken
        lock_scope=(
            f"INSERT INTO {scopes} (scope) VALUES (%(scope)s) ON CONFLICT (scope) DO NOTHING; "
            f"SELECT {SCOPE_COLUMNS} FROM {scopes} WHERE scope = %(scope)s FOR UPDATE"
        ),
        reserve=(
            f"UPDATE {scopes} SET reserved_usd_nanos = reserved_usd_nanos + %(usd)s, "
            f"reserved_tokens = reserved_tokens + %(tokens)s WHERE scope = %(scope)s; "
            f"INSERT INTO {entries} (id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, created_at, "
            f"dimensions) VALUES (%(id)s, %(scope)s, %(run_id)s, %(step)s, %(usd)s, %(tokens)s, 'reserved', %(now)s, "
            f"%(dimensions)s)",
        ),
        lock_entry=f"SELECT {LOCKED_ENTRY_COLUMNS} FROM {entries} WHERE id = %(id)s FOR UPDATE",
        lock_open_entries=(
            f"SELECT {LOCKED_ENTRY_COLUMNS} FROM {entries} WHERE run_id = %(run_id)s AND state = 'reserved' FOR UPDATE"
        ),
        close_entry=(
            f"UPDATE {entries} SET state = %(state)s, actual_usd_nanos = %(actual_usd)s, "
            f"actual_tokens = %(actual_tokens)s, overshoot = %(overshoot)s::boolean, closed_at = %(now)s "
            f"WHERE id = %(id)s"
        ),
        move_to_spent=(
            f"UPDATE {scopes} SET reserved_usd_nanos = reserved_usd_nanos - %(usd)s, "
            f"reserved_tokens = reserved_tokens - %(tokens)s, spent_usd_nanos = spent_usd_nanos + %(spent_usd)s, "
            f"spent_tokens = spent_tokens + %(spent_tokens)s, overshoots = overshoots + %(overshoot)s, "
            f"halted_reason = CASE WHEN NOT halted AND %(overshoot)s::boolean THEN %(reason)s ELSE halted_reason END, "
            f"halted = halted OR %(overshoot)s::boolean WHERE scope = %(scope)s"
        ),
        resume=f"UPDATE {scopes} SET halted = FALSE, halted_reason = NULL WHERE scope = %(scope)s AND halted",
        select_scope=f"SELECT {SCOPE_COLUMNS} FROM {scopes} WHERE scope = %(scope)s",
        select_entries=f"SELECT {ENTRY_COLUMNS} FROM {entries}",
        entries_order="ORDER BY created_at, seq",
        clock="SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8",
        ticket_head=(
            f"SELECT ticket FROM {tickets} WHERE scope = %(scope)s AND expires_at >= %(now)s "
            "ORDER BY seq, ticket LIMIT 1"
        ),
        ticket_of=f"SELECT seq FROM {tickets} WHERE ticket = %(ticket)s LIMIT 1",
        next_ticket=f"SELECT nextval('{tickets}_seq')",
        hold_ticket=(
            f"INSERT INTO {tickets} (ticket, scope, seq, expires_at) VALUES (%(ticket)s, %(scope)s, %(seq)s, "
            "%(expires)s) ON CONFLICT (ticket, scope) DO UPDATE SET expires_at = EXCLUDED.expires_at"
        ),
        drop_expired=f"DELETE FROM {tickets} WHERE scope = %(scope)s AND expires_at < %(now)s",
        leave=f"DELETE FROM {tickets} WHERE ticket = %(ticket)s",
    )


def _connect(url: str, where: str, connect_timeout_s: int, lock_timeout_s: float) -> _Connection:
    """A new connection whose row-lock waits end after `lock_timeout_s`."""
    try:
        conn = psycopg2.connect(libpq_url(url), connect_timeout=connect_timeout_s)
    except psycopg2.Error as exc:
        raise StorageError(
            f"Cannot connect to the budget ledger in {where} ({_detail(exc)}). Check that the server "
            "is running and reachable and that the URL's user, password and database are right."
        ) from exc
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{round(lock_timeout_s * 1000)}ms",))
        conn.commit()
    except psycopg2.Error as exc:
        conn.close()
        raise StorageError(
            f"Cannot set lock_timeout on the budget ledger's connection to {where} ({_detail(exc)}). "
            "Check the server's configuration."
        ) from exc
    return conn


def _create_tables(cur: _Cursor, prefix: str) -> None:
    """Create the tables and indexes named `<prefix>...`, only when one is missing: CREATE INDEX IF NOT EXISTS locks
    the table against writers even when the index exists. Concurrent creations can collide in the catalog: they
    are serialized on an advisory lock."""
    tables = ("scopes", "entries", "entries_run_id", "entries_scope", "meta", "tickets", "tickets_queue", "tickets_seq")
    names = [f"{prefix}{name}" for name in tables]
    cur.execute(f"SELECT {', '.join(['to_regclass(%s)'] * len(names))}", names)
    row = cur.fetchone()
    cur.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s "
        "AND column_name = 'dimensions'",
        (f"{prefix}entries",),
    )
    if row is not None and all(oid is not None for oid in row) and cur.fetchone() is not None:
        return
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"flujo_dagster.ledger.{prefix}",))
    schema = _schema(f"{prefix}scopes", f"{prefix}entries", f"{prefix}meta", f"{prefix}tickets")
    cur.execute(schema, {"ledger_id": new_ledger_id()})


def _ledger_id(cur: _Cursor, prefix: str, where: str) -> str:
    """The id in the meta table (its tables created first when missing, with a new id)."""
    _create_tables(cur, prefix)
    cur.execute(f"SELECT value FROM {prefix}meta WHERE key = 'ledger_id'")
    row = cur.fetchone()
    if row is None:
        raise StorageError(
            f"The budget ledger in {where} has no ledger id in its table {prefix}meta. Restore the tables, or drop "
            "them to start a new ledger (then run `flujo-dagster ledger adopt`)."
        )
    return str(row[0])


def _storage_error(exc: psycopg2.Error, where: str, lock_timeout_s: float) -> StorageError:
    """The error to raise for a driver error that is not transient."""
    if isinstance(exc, psycopg2.errors.LockNotAvailable):
        return StorageError(
            f"The budget ledger in {where} stayed locked by another session for more than "
            f"{lock_timeout_s} s. Look for a hung process or an idle transaction holding it "
            "(pg_stat_activity), or raise lock_timeout."
        )
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return StorageError(
            f"Lost the connection to the budget ledger in {where} ({_detail(exc)}). The operation "
            "may or may not have been committed; check the server, then look at the ledger's entries."
        )
    return StorageError(
        f"The budget ledger in {where} cannot be used ({_detail(exc)}). Check that these tables "
        "are a flujo_dagster budget ledger and the user may write them, or choose another table_prefix."
    )


class PostgresBudgetLedger(SqlBudgetLedger[_Connection]):
    """A `BudgetLedger` in the PostgreSQL database at `url` (libpq URL, e.g. `postgresql://user@host:5432/db`).

    `table_prefix` names the tables (lowercase letters, digits, underscores). `connect_timeout` bounds how long
    connecting may take (whole seconds, rounded up); `lock_timeout` how long one operation waits for a row another
    session holds before it raises `StorageError`. Usable from any number of threads and processes at once.
    """

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "flujo_budget_",
        connect_timeout: timedelta = timedelta(seconds=10),
        lock_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError(
                f"table_prefix {table_prefix!r} is not allowed: use 1 to 40 lowercase letters, digits or "
                "underscores, starting with a letter or underscore"
            )
        self.url = url
        self.table_prefix = table_prefix
        connecting = duration(connect_timeout, "PostgresBudgetLedger connect_timeout", positive=True)
        self.connect_timeout_s = math.ceil(connecting.total_seconds())  # libpq takes whole seconds
        self.lock_timeout_s = duration(lock_timeout, "PostgresBudgetLedger lock_timeout", positive=True).total_seconds()
        scopes, entries = f"{table_prefix}scopes", f"{table_prefix}entries"
        where = f"PostgreSQL {redact_url(url)} (tables {scopes}, {entries})"
        connections = PerThreadConnections(self._open, _Connection.close, _is_open)
        super().__init__(_statements(scopes, entries, f"{table_prefix}tickets"), where, connections)
        try:
            self._write(lambda cur: _create_tables(cur, table_prefix))
        except BaseException:
            self.close()
            raise

    def ledger_id(self) -> str:
        """The id in the meta table; tables dropped since are created again first, with a new id."""
        return self._write(lambda cur: _ledger_id(cur, self.table_prefix, self._where))

    def _open(self) -> _Connection:
        return _connect(self.url, self._where, self.connect_timeout_s, self.lock_timeout_s)

    def _write(self, body: Callable[[_Cursor], _T]) -> _T:
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
                raise _storage_error(exc, self._where, self.lock_timeout_s) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                conn.close()  # the connection is lost: the next use opens another
                raise _storage_error(exc, self._where, self.lock_timeout_s) from exc
            except psycopg2.Error as exc:
                conn.rollback()
                raise _storage_error(exc, self._where, self.lock_timeout_s) from exc
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        raise AssertionError("unreachable")  # pragma: no cover
