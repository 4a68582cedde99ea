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
from datetime import timedelta
from pathlib import Path
from typing import Literal, TypeVar

from flujo_dagster.dsl.durations import duration
from flujo_dagster.errors import StorageError
from flujo_dagster.pricing.ledger import PerThreadConnections, new_ledger_id
from flujo_dagster.pricing.ledger_sql import (
    ENTRY_COLUMNS,
    LOCKED_ENTRY_COLUMNS,
    SCOPE_COLUMNS,
    SqlBudgetLedger,
    Statements,
)

__all__ = ["SqliteBudgetLedger"]

_T = TypeVar("_T")

SCHEMA_VERSION = 3
"""1: scopes and entries; 2: the meta table holding the ledger's id, and each entry's dimensions; 3: the queue of
requests waiting for admission (tickets)."""

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
        closed_at REAL,
        dimensions TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS flujo_budget_entries_run_id ON flujo_budget_entries (run_id, state)",
    "CREATE INDEX IF NOT EXISTS flujo_budget_entries_scope ON flujo_budget_entries (scope)",
    "CREATE TABLE IF NOT EXISTS flujo_budget_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO flujo_budget_meta (key, value) VALUES ('ledger_id', :ledger_id)",
    """CREATE TABLE IF NOT EXISTS flujo_budget_tickets (
        ticket TEXT NOT NULL,
        scope TEXT NOT NULL,
        seq INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (ticket, scope)
    )""",
    "CREATE INDEX IF NOT EXISTS flujo_budget_tickets_queue ON flujo_budget_tickets (scope, seq)",
)

_SCOPES = "flujo_budget_scopes"
_ENTRIES = "flujo_budget_entries"
_TICKETS = "flujo_budget_tickets"

_STATEMENTS = Statements(
    placeholder=":{}",
    # BEGIN IMMEDIATE holds the database's write lock: a plain read is already held against other writers
    lock_scope=f"SELECT {SCOPE_COLUMNS} FROM {_SCOPES} WHERE scope = :scope",
    reserve=(
        f"INSERT INTO {_SCOPES} (scope, reserved_usd_nanos, reserved_tokens) VALUES (:scope, :usd, :tokens) "
        "ON CONFLICT (scope) DO UPDATE SET reserved_usd_nanos = reserved_usd_nanos + excluded.reserved_usd_nanos, "
        "reserved_tokens = reserved_tokens + excluded.reserved_tokens",
        f"INSERT INTO {_ENTRIES} (id, scope, run_id, step, reserved_usd_nanos, reserved_tokens, state, created_at, "
        "dimensions) VALUES (:id, :scope, :run_id, :step, :usd, :tokens, 'reserved', :now, :dimensions)",
    ),
    lock_entry=f"SELECT {LOCKED_ENTRY_COLUMNS} FROM {_ENTRIES} WHERE id = :id",
    lock_open_entries=f"SELECT {LOCKED_ENTRY_COLUMNS} FROM {_ENTRIES} WHERE run_id = :run_id AND state = 'reserved'",
    close_entry=(
        f"UPDATE {_ENTRIES} SET state = :state, actual_usd_nanos = :actual_usd, actual_tokens = :actual_tokens, "
        "overshoot = :overshoot, closed_at = :now WHERE id = :id"
    ),
    move_to_spent=(
        f"UPDATE {_SCOPES} SET reserved_usd_nanos = reserved_usd_nanos - :usd, reserved_tokens = reserved_tokens - "
        ":tokens, spent_usd_nanos = spent_usd_nanos + :spent_usd, spent_tokens = spent_tokens + :spent_tokens, "
        "overshoots = overshoots + :overshoot, "
        "halted_reason = CASE WHEN halted = 0 AND :overshoot THEN :reason ELSE halted_reason END, "
        "halted = CASE WHEN :overshoot THEN 1 ELSE halted END WHERE scope = :scope"
    ),
    resume=f"UPDATE {_SCOPES} SET halted = 0, halted_reason = NULL WHERE scope = :scope AND halted = 1",
    select_scope=f"SELECT {SCOPE_COLUMNS} FROM {_SCOPES} WHERE scope = :scope",
    select_entries=f"SELECT {ENTRY_COLUMNS} FROM {_ENTRIES}",
    entries_order="ORDER BY created_at, rowid",
    clock="SELECT (julianday('now') - 2440587.5) * 86400.0",
    ticket_head=(
        f"SELECT ticket FROM {_TICKETS} WHERE scope = :scope AND expires_at >= :now ORDER BY seq, ticket LIMIT 1"
    ),
    ticket_of=f"SELECT seq FROM {_TICKETS} WHERE ticket = :ticket LIMIT 1",
    # BEGIN IMMEDIATE serializes every writer: one above the highest number in use is above every earlier one
    next_ticket=f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {_TICKETS}",
    hold_ticket=(
        f"INSERT INTO {_TICKETS} (ticket, scope, seq, expires_at) VALUES (:ticket, :scope, :seq, :expires) "
        "ON CONFLICT (ticket, scope) DO UPDATE SET expires_at = excluded.expires_at"
    ),
    drop_expired=f"DELETE FROM {_TICKETS} WHERE scope = :scope AND expires_at < :now",
    leave=f"DELETE FROM {_TICKETS} WHERE ticket = :ticket",
)


def _is_busy(error: sqlite3.Error) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _storage_error(path: Path, busy_timeout_s: float, exc: sqlite3.Error) -> StorageError:
    """The error to raise for a driver error on the ledger file at `path`."""
    if _is_busy(exc):
        return StorageError(
            f"The budget ledger {str(path)!r} stayed locked by another process for more than "
            f"{busy_timeout_s} s ({exc}). Look for a hung process holding it, or raise busy_timeout."
        )
    return StorageError(
        f"The budget ledger {str(path)!r} cannot be used: {exc}. Check that the file is a flujo_dagster "
        "budget ledger (SQLite) and is readable and writable, or point the ledger at a new file."
    )


def _wal_and_version(conn: sqlite3.Connection, path: Path, busy_timeout_s: float) -> int:
    """Switch the file to WAL mode if it is not yet; its schema version. Reads first: a ledger already set up opens
    without waiting for another process's write lock."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            return int(version)
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL fails at once, without waiting, while another process opens it.
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise _storage_error(path, busy_timeout_s, exc) from exc
            time.sleep(0.005)
        except sqlite3.Error as exc:
            raise _storage_error(path, busy_timeout_s, exc) from exc


def _create_schema(cur: sqlite3.Cursor, path: Path) -> None:
    """Create the tables (inside the write transaction), refusing a file of a newer schema version."""
    (version,) = cur.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"The budget ledger {str(path)!r} has schema version {version}, newer than this "
            f"flujo_dagster understands ({SCHEMA_VERSION}). Upgrade flujo_dagster or use another file."
        )
    for statement in _SCHEMA:
        cur.execute(statement, {"ledger_id": new_ledger_id()} if ":ledger_id" in statement else {})
    columns = {row[1] for row in cur.execute("PRAGMA table_info(flujo_budget_entries)").fetchall()}
    if "dimensions" not in columns:  # a version 1 file
        cur.execute("ALTER TABLE flujo_budget_entries ADD COLUMN dimensions TEXT")
    if version < SCHEMA_VERSION:
        cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _file_key(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` (device and inode), None when there is none."""
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


class SqliteBudgetLedger(SqlBudgetLedger[sqlite3.Connection]):
    """A `BudgetLedger` in the SQLite file at `path` (created, with its parent folders, when missing).

    `busy_timeout` bounds how long one operation waits for another process's write transaction before it
    raises `StorageError`. Usable from any number of threads and processes at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: timedelta = timedelta(seconds=30),
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = duration(busy_timeout, "SqliteBudgetLedger busy_timeout", positive=True).total_seconds()
        self.synchronous = synchronous
        connections = PerThreadConnections(self._open, sqlite3.Connection.close, lambda _: True)
        super().__init__(_STATEMENTS, repr(str(self.path)), connections)
        self._file: tuple[int, int] | None = None
        self._set_up()

    def _set_up(self) -> None:
        """Create the folder, the file and its tables when missing; remember which file this is."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"Cannot create the folder of the budget ledger {str(self.path)!r}: {exc}. "
                "Choose a ledger path in a writable folder."
            ) from exc
        try:
            if _wal_and_version(self._connection(), self.path, self.busy_timeout_s) != SCHEMA_VERSION:
                self._write(lambda cur: _create_schema(cur, self.path))
            self._file = _file_key(self.path)
        except BaseException:
            self.close()
            raise

    @property
    def location(self) -> str:
        """The ledger file's absolute path."""
        return os.path.abspath(self.path)

    def ledger_id(self) -> str:
        """The id in the file's meta table. When the file was deleted or replaced since this object opened it (its
        connections still see the old one), the connections are closed and the file opened (or created) again."""
        if _file_key(self.path) != self._file:
            self.close()
            self._set_up()

        def body(cur: sqlite3.Cursor) -> str:
            row = cur.execute("SELECT value FROM flujo_budget_meta WHERE key = 'ledger_id'").fetchone()
            if row is None:
                raise StorageError(
                    f"The budget ledger {str(self.path)!r} has no ledger id in its table flujo_budget_meta. Restore "
                    "the file, or move it away to start a new ledger (then run `flujo-dagster ledger adopt`)."
                )
            return str(row[0])

        return self._read(body)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.Error as exc:
            raise _storage_error(self.path, self.busy_timeout_s, exc) from exc
        return conn

    def _write(self, body: Callable[[sqlite3.Cursor], _T]) -> _T:
        """Run `body` in one BEGIN IMMEDIATE transaction: committed when it returns, rolled back when it raises."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _storage_error(self.path, self.busy_timeout_s, exc) from exc
        try:
            result = body(conn.cursor())
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _storage_error(self.path, self.busy_timeout_s, exc) from exc
            raise
        return result

    def _read(self, body: Callable[[sqlite3.Cursor], _T]) -> _T:
        """Run `body` outside a transaction (WAL readers never wait for the writer)."""
        try:
            return body(self._connection().cursor())
        except sqlite3.Error as exc:
            raise _storage_error(self.path, self.busy_timeout_s, exc) from exc
