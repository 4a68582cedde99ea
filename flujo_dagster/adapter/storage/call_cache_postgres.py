"""The call cache in PostgreSQL (optional extra `postgres`): shared by the processes of many machines.

Tables `<table_prefix>` (entries) and `<table_prefix>_claims`, created when missing. Every operation is one
transaction that first takes a transaction-scoped advisory lock on its key, so that reading the entry and taking
the claim see no fill of the same key in between (READ COMMITTED alone would let one slip through).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import psycopg2
import psycopg2.extensions

from flujo_dagster.adapter.storage.call_cache_sql import SqlCallCache, cache_statements
from flujo_dagster.dsl.durations import duration
from flujo_dagster.errors import StorageError
from flujo_dagster.pricing.ledger import PerThreadConnections
from flujo_dagster.pricing.ledger_postgres import libpq_url, redact_url
from flujo_dagster.pricing.ledger_sql import Cursor

__all__ = ["PostgresCallCache"]

_T = TypeVar("_T")
_Connection = psycopg2.extensions.connection
_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,39}")


class PostgresCallCache(SqlCallCache[_Connection]):
    """A `CallCache` in the PostgreSQL database at `url`, in tables named from `table_prefix` (lowercase letters,
    digits, underscores)."""

    def __init__(
        self,
        url: str,
        *,
        table_prefix: str = "flujo_call_cache",
        connect_timeout: timedelta = timedelta(seconds=10),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _PREFIX.fullmatch(table_prefix):
            raise ValueError(
                f"table_prefix {table_prefix!r} is not allowed: use 1 to 40 lowercase letters, digits or "
                "underscores, starting with a letter or underscore"
            )
        self.url = url
        connecting = duration(connect_timeout, "PostgresCallCache connect_timeout", positive=True)
        self.connect_timeout_s = math.ceil(connecting.total_seconds())
        statements = cache_statements(table_prefix, f"{table_prefix}_claims", "%({})s", "DOUBLE PRECISION")
        connections = PerThreadConnections(self._open, _Connection.close, lambda conn: not conn.closed)
        super().__init__(statements, f"PostgreSQL {redact_url(url)} (tables {table_prefix}*)", connections, clock)
        self._lock_name = f"flujo_dagster.call_cache.{table_prefix}"

        def create(cur: Cursor) -> None:
            for statement in statements.schema:
                cur.execute(statement, {})

        self._write(create)

    def _open(self) -> _Connection:
        try:
            return psycopg2.connect(libpq_url(self.url), connect_timeout=self.connect_timeout_s)
        except psycopg2.Error as exc:
            raise StorageError(
                f"Cannot connect to the call cache in {self._where} ({' '.join(str(exc).split())}). Check that the "
                "server is running and reachable and that the URL's user, password and database are right."
            ) from exc

    def _write(self, body: Callable[[Cursor], _T], key: str | None = None) -> _T:
        """One transaction, holding the advisory lock of `key` (or of the tables, to create them)."""
        conn = self._connections.get()
        try:
            with conn.cursor() as cur:
                lock = self._lock_name if key is None else f"{self._lock_name}.{key}"
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%(lock)s))", {"lock": lock})
                result = body(cur)
            conn.commit()
        except psycopg2.Error as exc:
            if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
                conn.close()  # the next use opens another connection
            else:
                conn.rollback()
            detail = " ".join(str(exc).split())
            raise StorageError(f"The call cache in {self._where} cannot be used ({detail})") from exc
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        return result
