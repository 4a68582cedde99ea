"""Importable helpers of tests/test_ledger.py: the backends under test and the functions its spawned processes run.

Kept free of dagster and pytest so that a spawned process imports only the ledger.
"""

from __future__ import annotations

import random
import sqlite3
import time
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event

import psycopg2

from flujo_dagster.errors import UsageLimitExceededError
from flujo_dagster.pricing.ledger import BudgetLedger, Limits, Usage
from flujo_dagster.pricing.ledger_postgres import PostgresBudgetLedger
from flujo_dagster.pricing.ledger_sqlite import SqliteBudgetLedger


@dataclass(frozen=True)
class Backend:
    """Where a ledger under test lives: a SQLite file, or a PostgreSQL URL with a table prefix of its own."""

    kind: str  # "sqlite" | "postgres"
    location: str  # file path or URL
    prefix: str = "flujo_budget_"

    def open(self, *, timeout_s: float = 30.0) -> BudgetLedger:
        """A new ledger object on this storage; `timeout_s` bounds waits for another writer's lock."""
        if self.kind == "sqlite":
            return SqliteBudgetLedger(self.location, busy_timeout=timedelta(seconds=timeout_s))
        return PostgresBudgetLedger(self.location, table_prefix=self.prefix, lock_timeout=timedelta(seconds=timeout_s))

    def row_counts(self) -> tuple[int, int]:
        """(rows in the scopes table, rows in the entries table), read with the database's own client."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.location) as conn:
                (scopes,) = conn.execute("SELECT COUNT(*) FROM flujo_budget_scopes").fetchone()
                (entries,) = conn.execute("SELECT COUNT(*) FROM flujo_budget_entries").fetchone()
            return int(scopes), int(entries)
        pg = psycopg2.connect(self.location)
        try:
            with pg.cursor() as cur:
                cur.execute(f"SELECT COUNT(*) FROM {self.prefix}scopes")
                scope_rows = cur.fetchone()
                cur.execute(f"SELECT COUNT(*) FROM {self.prefix}entries")
                entry_rows = cur.fetchone()
            assert scope_rows is not None and entry_rows is not None
            return int(scope_rows[0]), int(entry_rows[0])
        finally:
            pg.close()

    def drop_tables(self) -> None:
        """Remove this backend's PostgreSQL tables (a SQLite file goes with its temporary folder)."""
        if self.kind != "postgres":
            return
        try:
            conn = psycopg2.connect(self.location)
        except psycopg2.OperationalError:
            return  # unreachable: the test has failed on it already, and created no table
        try:
            with conn.cursor() as cur:
                tables = ", ".join(f"{self.prefix}{t}" for t in ("scopes", "entries", "meta", "tickets"))
                cur.execute(f"DROP TABLE IF EXISTS {tables}; DROP SEQUENCE IF EXISTS {self.prefix}tickets_seq")
            conn.commit()
        finally:
            conn.close()


def contend(
    backend: Backend,
    scope: str,
    limits: Limits,
    worker: int,
    cycles: int,
    barrier: Barrier,
    out: Queue[tuple[int, int, int]],
) -> None:
    """Run `cycles` reserve+reconcile cycles (random amounts, actual <= reserved) and report (worker, ok, refused)."""
    ledger = backend.open(timeout_s=120.0)
    rng = random.Random(worker)
    ok = refused = 0
    barrier.wait()
    for i in range(cycles):
        amount = Usage(usd_nanos=rng.randint(1, 10) * 1_000_000, tokens=rng.randint(10, 100))
        try:
            reservation = ledger.reserve(scope, limits, amount, run_id=f"run-{worker}", step=f"s{i}")
        except UsageLimitExceededError:
            refused += 1
            continue
        if rng.random() < 0.5:
            actual = amount  # the full reservation was spent
        else:
            actual = Usage(rng.randint(0, amount.usd_nanos), rng.randint(0, amount.tokens))
        assert ledger.reconcile(reservation, actual) is False
        ok += 1
    ledger.close()
    out.put((worker, ok, refused))


def reserve_and_hang(backend: Backend, run_id: str, ready: Event) -> None:
    """Reserve in run `run_id` (two open reservations, one reconciled), then wait to be killed."""
    ledger = backend.open()
    limits = Limits(max_usd_nanos=10_000_000_000)
    done = ledger.reserve("crash", limits, Usage(300_000_000, 300), run_id=run_id, step="done")
    ledger.reconcile(done, Usage(200_000_000, 250))
    ledger.reserve("crash", limits, Usage(700_000_000, 700), run_id=run_id, step="in-flight-1")
    ledger.reserve("crash-other", limits, Usage(50_000_000, 50), run_id=run_id, step="in-flight-2")
    ready.set()
    time.sleep(600)


def hold_write_lock_and_hang(backend: Backend, scope: str, ready: Event) -> None:
    """Open a write transaction on the ledger's scope row with the database's own client, change the scope's
    spend inside it, then wait to be killed without committing."""
    if backend.kind == "sqlite":
        conn = sqlite3.connect(backend.location, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE flujo_budget_scopes SET spent_usd_nanos = spent_usd_nanos + 1000000000 WHERE scope = ?", (scope,)
        )
    else:
        pg = psycopg2.connect(backend.location)
        with pg.cursor() as cur:
            cur.execute(
                f"UPDATE {backend.prefix}scopes SET spent_usd_nanos = spent_usd_nanos + 1000000000 WHERE scope = %s",
                (scope,),
            )
    ready.set()
    time.sleep(600)


def open_and_reserve(backend: Backend, barrier: Barrier, out: Queue[str]) -> None:
    """Open the ledger (possibly creating it) together with the other processes, reserve once, report the id."""
    barrier.wait(120)
    ledger = backend.open()
    reservation = ledger.reserve("first", Limits(), Usage(1, 1), run_id="run-1", step="open")
    ledger.close()
    out.put(reservation.id)


def queue_and_report(backend: Backend, scope: str, limits: Limits, ticket: str, out: Queue[str]) -> None:
    """Try to admit one request of the whole limit under `ticket` (already queued by the test) until it is admitted,
    then report the ticket and release the reservation, so that the next in the queue can be admitted."""
    ledger = backend.open(timeout_s=120.0)
    assert limits.max_usd_nanos is not None
    amount = Usage(limits.max_usd_nanos, 1)
    while not isinstance(
        admitted := ledger.admit([(scope, limits)], amount, ticket=ticket, lease_s=60.0, run_id=ticket, step="s"),
        list,
    ):
        time.sleep(0.01)
    out.put(ticket)
    ledger.release(admitted[0])
    ledger.close()
