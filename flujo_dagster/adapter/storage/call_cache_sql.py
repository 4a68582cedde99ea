"""The call cache's stores: the SQL written once (`SqlCallCache`) and its SQLite backend (`SqliteCallCache`, the
default, a file beside the budget ledger's). The PostgreSQL backend is in `call_cache_postgres.py`.

Two tables: the entries (key, the serialized response, when it was stored) and the claims (key, owner, when the
lease ends). `acquire` reads the entry and, when there is none fresh enough, takes the claim in the same
transaction, with one upsert that only replaces an expired claim: of two callers, one gets it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Generic, TypeVar

from flujo_dagster.dsl.durations import duration
from flujo_dagster.errors import StorageError
from flujo_dagster.pricing.ledger import PerThreadConnections
from flujo_dagster.pricing.ledger_sql import Cursor
from flujo_dagster.runtime.cache import Acquired, claim_owner

__all__ = ["CacheStatements", "SqlCallCache", "SqliteCallCache"]

_C = TypeVar("_C")
_T = TypeVar("_T")


@dataclass(frozen=True)
class CacheStatements:
    """A backend's SQL over its two tables, with named placeholders in its driver's style."""

    schema: tuple[str, ...]
    select_entry: str
    claim: str
    fill: tuple[str, str]
    release: str
    discard: str
    release_run: str


def cache_statements(entries: str, claims: str, placeholder: str, real: str) -> CacheStatements:
    """The statements over tables `entries` and `claims` (`placeholder` formats a parameter's name; `real` is the
    type of a time in seconds)."""
    p = placeholder.format
    return CacheStatements(
        schema=(
            f"CREATE TABLE IF NOT EXISTS {entries} (cache_key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            f"created_at {real} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {claims} (cache_key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            f"expires_at {real} NOT NULL)",
        ),
        select_entry=f"SELECT value, created_at FROM {entries} WHERE cache_key = {p('key')}",
        claim=(
            f"INSERT INTO {claims} (cache_key, owner, expires_at) VALUES ({p('key')}, {p('owner')}, {p('expires')}) "
            f"ON CONFLICT (cache_key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
            f"WHERE {claims}.expires_at <= {p('now')}"
        ),
        fill=(
            f"INSERT INTO {entries} (cache_key, value, created_at) VALUES ({p('key')}, {p('value')}, {p('now')}) "
            "ON CONFLICT (cache_key) DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
            f"DELETE FROM {claims} WHERE cache_key = {p('key')} AND owner = {p('owner')}",
        ),
        release=f"DELETE FROM {claims} WHERE cache_key = {p('key')} AND owner = {p('owner')}",
        discard=f"DELETE FROM {entries} WHERE cache_key = {p('key')} AND value = {p('value')}",
        release_run=f"DELETE FROM {claims} WHERE substr(owner, 1, length({p('prefix')})) = {p('prefix')}",
    )


class SqlCallCache(ABC, Generic[_C]):
    """A `CallCache` over SQL; a backend gives its statements, connections and transactions. `clock` is the time
    in seconds (tests move it)."""

    def __init__(
        self, statements: CacheStatements, where: str, connections: PerThreadConnections[_C], clock: Callable[[], float]
    ) -> None:
        self._sql = statements
        self._where = where
        self._connections = connections
        self.clock = clock

    @abstractmethod
    def _write(self, body: Callable[[Cursor], _T], key: str | None = None) -> _T:
        """Run `body` in one transaction, exclusive with any other on `key`."""

    def close(self) -> None:
        """Close this process's connections (each thread opens a new one on its next use)."""
        self._connections.close_all()

    def acquire(self, key: str, *, owner: str, max_age_s: float | None, lease_s: float) -> Acquired:
        """See `CallCache.acquire`."""
        sql = self._sql

        def body(cur: Cursor) -> Acquired:
            now = self.clock()
            cur.execute(sql.select_entry, {"key": key})
            row = cur.fetchone()
            if isinstance(row, tuple) and (max_age_s is None or float(row[1]) > now - max_age_s):
                return Acquired(value=str(row[0]))
            cur.execute(sql.claim, {"key": key, "owner": owner, "expires": now + lease_s, "now": now})
            return Acquired(claimed=cur.rowcount == 1)

        return self._write(body, key)

    def fill(self, key: str, *, owner: str, value: str) -> None:
        """See `CallCache.fill`."""
        store, drop = self._sql.fill

        def body(cur: Cursor) -> None:
            cur.execute(store, {"key": key, "value": value, "now": self.clock()})
            cur.execute(drop, {"key": key, "owner": owner})

        self._write(body, key)

    def release(self, key: str, *, owner: str) -> None:
        """See `CallCache.release`."""
        self._write(lambda cur: cur.execute(self._sql.release, {"key": key, "owner": owner}), key)

    def discard(self, key: str, *, value: str) -> None:
        """See `CallCache.discard`."""
        self._write(lambda cur: cur.execute(self._sql.discard, {"key": key, "value": value}), key)

    def release_run(self, run_id: str) -> int:
        """See `CallCache.release_run`."""

        def body(cur: Cursor) -> int:
            cur.execute(self._sql.release_run, {"prefix": claim_owner(run_id, "")})
            return max(cur.rowcount, 0)

        return self._write(body)


def _error(path: Path, exc: sqlite3.Error) -> StorageError:
    return StorageError(
        f"The call cache {str(path)!r} cannot be used: {exc}. Check that the file is a flujo_dagster call cache "
        "(SQLite) and is readable and writable, or delete it (it holds only cached answers)."
    )


class SqliteCallCache(SqlCallCache[sqlite3.Connection]):
    """A `CallCache` in the SQLite file at `path` (created with its folders when missing), shared by every thread
    and process of the machine. `busy_timeout` bounds how long one operation waits for another's write."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: timedelta = timedelta(seconds=30),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = duration(busy_timeout, "SqliteCallCache busy_timeout", positive=True).total_seconds()
        statements = cache_statements("flujo_call_cache", "flujo_call_cache_claims", ":{}", "REAL")
        connections = PerThreadConnections(self._open, sqlite3.Connection.close, lambda _: True)
        super().__init__(statements, repr(str(self.path)), connections, clock)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wal(time.monotonic() + self.busy_timeout_s)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise StorageError(f"Cannot open the call cache {str(self.path)!r}: {exc}") from exc
        self._write(lambda cur: [cur.execute(s, {}) for s in statements.schema])

    def _wal(self, deadline: float) -> None:
        """Switch the file to WAL mode if it is not yet. Switching a new file fails at once, without waiting,
        while another process opens it: tried again until `deadline`."""
        conn = self._connections.get()
        while True:
            try:
                if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if not ("locked" in text or "busy" in text) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _open(self) -> sqlite3.Connection:
        try:
            timeout = self.busy_timeout_s
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise _error(self.path, exc) from exc
        return conn

    def _write(self, body: Callable[[Cursor], _T], key: str | None = None) -> _T:
        """One BEGIN IMMEDIATE transaction (SQLite's write lock: exclusive with every other writer)."""
        conn = self._connections.get()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn.cursor())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _error(self.path, exc) from exc
        return result
