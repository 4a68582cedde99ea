"""The budget ledger, on a real SQLite file and on the real PostgreSQL server, with real processes.

PostgreSQL tests run when FLUJO_TEST_POSTGRES_URL is set (e.g. postgresql://postgres@127.0.0.1:5432/test) and fail
when that server cannot be reached; each test uses tables of its own (a unique prefix), dropped afterwards.
Spawned processes use the "spawn" start method (the test process may have threads).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import cast

import psycopg2
import pytest

from flujo_dagster.errors import StorageError, UsageLimitExceededError
from flujo_dagster.pricing import (
    USD_NANOS,
    AdmittingLedger,
    BudgetLedger,
    IdentifiedLedger,
    Limits,
    PostgresBudgetLedger,
    Reservation,
    ScopeTotals,
    SqliteBudgetLedger,
    Usage,
    Waiting,
    format_usd,
)
from flujo_dagster.pricing.ledger import PerThreadConnections
from flujo_dagster.pricing.ledger_postgres import libpq_url, redact_url
from tests.ledger_workers import (
    Backend,
    contend,
    hold_write_lock_and_hang,
    open_and_reserve,
    queue_and_report,
    reserve_and_hang,
)

POSTGRES_URL = os.environ.get("FLUJO_TEST_POSTGRES_URL", "")
SPAWN = multiprocessing.get_context("spawn")
CENT = USD_NANOS // 100


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty ledger storage of each kind."""
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "not-yet" / "budget.db"))
        return
    if not POSTGRES_URL:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set: set it (postgresql://user@host:port/db) to test PostgreSQL")
    chosen = Backend("postgres", POSTGRES_URL, prefix=f"flujo_budget_t{uuid.uuid4().hex[:12]}_")
    yield chosen
    chosen.drop_tables()


@pytest.fixture
def ledger(backend: Backend) -> Iterator[BudgetLedger]:
    """A ledger object on `backend`; a PostgreSQL server that is configured but unreachable fails the test."""
    try:
        opened = backend.open()
    except StorageError as exc:
        pytest.fail(f"FLUJO_TEST_POSTGRES_URL is set but the ledger cannot use it: {exc}")
    yield opened
    opened.close()


def assert_consistent(ledger: BudgetLedger, scope: str) -> None:
    """The scope's counters equal the sums over its entries, exactly."""
    entries = ledger.entries(scope=scope)
    totals = ledger.totals(scope)
    closed = [e for e in entries if e.state != "reserved"]
    open_ = [e for e in entries if e.state == "reserved"]
    assert all((e.actual is None) == (e.state in ("reserved", "released")) for e in entries)
    assert totals.spent_usd_nanos == sum(e.actual.usd_nanos for e in closed if e.actual is not None)
    assert totals.spent_tokens == sum(e.actual.tokens for e in closed if e.actual is not None)
    assert totals.reserved_usd_nanos == sum(e.reserved.usd_nanos for e in open_)
    assert totals.reserved_tokens == sum(e.reserved.tokens for e in open_)
    assert totals.overshoots == sum(e.overshoot for e in entries)


def start(target: Callable[..., object], *args: object) -> SpawnProcess:
    """A started spawned process."""
    proc = SPAWN.Process(target=target, args=args)
    proc.start()
    return proc


def kill(proc: SpawnProcess) -> None:
    """SIGKILL the process and reap it."""
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


# values and messages -------------------------------------------------------------------------------------------


def test_amounts_are_exact_non_negative_integers() -> None:
    assert format_usd(1_500_000_000) == "$1.50"
    assert format_usd(1) == "$0.000000001"
    assert format_usd(0) == "$0.00"
    assert format_usd(123 * USD_NANOS + 450_000_000) == "$123.45"
    with pytest.raises(ValueError, match="Usage.usd_nanos must be between 0 and 2\\*\\*62, got -1"):
        Usage(-1, 0)
    with pytest.raises(TypeError, match="Usage.tokens must be an int, got float 1.5"):
        Usage(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Limits.max_tokens must be an int, got bool True"):
        Limits(max_tokens=True)


# 1. reserve ----------------------------------------------------------------------------------------------------


def test_reserve_within_limits_records_an_open_reservation(ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=USD_NANOS, max_tokens=1000)
    first = ledger.reserve("team", limits, Usage(40 * CENT, 400), run_id="run-1", step="draft")
    # exactly at both limits is allowed
    second = ledger.reserve("team", limits, Usage(60 * CENT, 600), run_id="run-1", step="review")
    assert (first.scope, first.run_id, first.step, first.usd_nanos, first.tokens) == (
        "team",
        "run-1",
        "draft",
        40 * CENT,
        400,
    )
    assert first.id != second.id
    totals = ledger.totals("team")
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos, totals.reserved_tokens) == (0, USD_NANOS, 1000)
    assert not totals.halted
    entries = ledger.entries(run_id="run-1")
    assert [(e.id, e.step, e.state, e.reserved, e.actual) for e in entries] == [
        (first.id, "draft", "reserved", Usage(40 * CENT, 400), None),
        (second.id, "review", "reserved", Usage(60 * CENT, 600), None),
    ]
    assert all(e.closed_at is None and e.created_at > 0 for e in entries)
    assert ledger.totals("never-used") == type(totals)("never-used", 0, 0, 0, 0, 0, False)
    assert_consistent(ledger, "team")


def test_reserve_over_max_usd_raises_and_writes_nothing(backend: Backend, ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=USD_NANOS)
    done = ledger.reserve("team", limits, Usage(40 * CENT, 10), run_id="run-1", step="draft")
    ledger.reconcile(done, Usage(30 * CENT, 10))
    ledger.reserve("team", limits, Usage(50 * CENT, 10), run_id="run-1", step="review")
    before = (backend.row_counts(), ledger.totals("team"), ledger.entries())
    with pytest.raises(UsageLimitExceededError) as caught:
        ledger.reserve("team", limits, Usage(25 * CENT, 10), run_id="run-2", step="summary")
    assert str(caught.value) == (
        "Budget of scope 'team' would be exceeded by run 'run-2' step 'summary': max_usd $1.00, spent $0.30, "
        "reserved $0.50, requested $0.25 (would total $1.05). Nothing was reserved and the request did not start: "
        "raise the Budget's max_cost_usd or lower the step's max_tokens."
    )
    assert (backend.row_counts(), ledger.totals("team"), ledger.entries()) == before
    # a refused first request of a new scope does not even create the scope's row
    with pytest.raises(UsageLimitExceededError):
        ledger.reserve("fresh", limits, Usage(USD_NANOS + 1, 0), run_id="run-2", step="big")
    assert backend.row_counts() == before[0]
    # what still fits is accepted
    ledger.reserve("team", limits, Usage(20 * CENT, 10), run_id="run-2", step="summary")
    assert ledger.totals("team").reserved_usd_nanos == 70 * CENT


def test_reserve_over_max_tokens_raises_and_writes_nothing(backend: Backend, ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=USD_NANOS, max_tokens=1000)
    ledger.reserve("team", limits, Usage(CENT, 900), run_id="run-1", step="draft")
    before = (backend.row_counts(), ledger.totals("team"), ledger.entries())
    with pytest.raises(UsageLimitExceededError) as caught:
        ledger.reserve("team", limits, Usage(CENT, 101), run_id="run-1", step="review")
    assert str(caught.value) == (
        "Budget of scope 'team' would be exceeded by run 'run-1' step 'review': max_tokens 1000, spent 0, "
        "reserved 900, requested 101 (would total 1001). Nothing was reserved and the request did not start: raise "
        "the Budget's max_tokens or lower the step's max_tokens."
    )
    assert (backend.row_counts(), ledger.totals("team"), ledger.entries()) == before


# 2. reconcile --------------------------------------------------------------------------------------------------


def test_reconcile_below_the_reservation_frees_the_difference(ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=USD_NANOS, max_tokens=10_000)
    reservation = ledger.reserve("team", limits, Usage(80 * CENT, 8000), run_id="run-1", step="draft")
    assert ledger.reconcile(reservation, Usage(123_456_789, 4321)) is False
    totals = ledger.totals("team")
    assert (totals.spent_usd_nanos, totals.spent_tokens) == (123_456_789, 4321)
    assert (totals.reserved_usd_nanos, totals.reserved_tokens, totals.overshoots, totals.halted) == (0, 0, 0, False)
    (entry,) = ledger.entries(scope="team")
    assert (entry.state, entry.actual, entry.overshoot) == ("reconciled", Usage(123_456_789, 4321), False)
    assert entry.closed_at is not None and entry.closed_at >= entry.created_at
    # the freed difference can be reserved again, to the nano
    rest = Usage(USD_NANOS - 123_456_789, 10_000 - 4321)
    ledger.reserve("team", limits, rest, run_id="run-1", step="review")
    with pytest.raises(UsageLimitExceededError):
        ledger.reserve("team", limits, Usage(1, 0), run_id="run-1", step="one-nano-more")
    assert_consistent(ledger, "team")


# 3. overshoot --------------------------------------------------------------------------------------------------


def test_overshoot_records_the_spend_and_halts_the_scope(ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=USD_NANOS, max_tokens=1000)
    in_flight = ledger.reserve("team", limits, Usage(10 * CENT, 100), run_id="run-1", step="other")
    reservation = ledger.reserve("team", limits, Usage(50 * CENT, 500), run_id="run-1", step="draft")
    # above the reservation, and above the scope's limit too: the spend happened, it is recorded
    assert ledger.reconcile(reservation, Usage(120 * CENT, 400)) is True
    totals = ledger.totals("team")
    assert (totals.spent_usd_nanos, totals.spent_tokens, totals.overshoots, totals.halted) == (
        120 * CENT,
        400,
        1,
        True,
    )
    with pytest.raises(UsageLimitExceededError) as caught:
        ledger.reserve("team", Limits(), Usage(0, 0), run_id="run-2", step="summary")
    assert str(caught.value) == (
        "Budget scope 'team' was halted by an overshoot at run 'run-1' step 'draft' (reserved $0.50 / 500 tokens, "
        "actual $1.20 / 400 tokens); refused the request of run 'run-2' step 'summary'. Check that the provider "
        "honours max_tokens (a reservation is priced for the configured model), then call resume('team') on the "
        "budget ledger."
    )
    # requests already in flight still reconcile; a token-only overshoot counts too, the first reason stays
    assert ledger.reconcile(in_flight, Usage(CENT, 101)) is True
    totals = ledger.totals("team")
    assert (totals.overshoots, totals.halted) == (2, True)
    assert totals.halted_reason is not None and "step 'draft'" in totals.halted_reason
    assert [e.overshoot for e in ledger.entries(scope="team")] == [True, True]
    # other scopes are not halted
    ledger.reserve("elsewhere", limits, Usage(CENT, 1), run_id="run-2", step="summary")
    assert_consistent(ledger, "team")
    # resume lifts the halt; the spend and the overshoot count stay
    assert ledger.resume("team") is True
    assert ledger.resume("team") is False
    ledger.reserve("team", Limits(), Usage(CENT, 1), run_id="run-2", step="summary")
    totals = ledger.totals("team")
    assert (totals.halted, totals.halted_reason, totals.overshoots, totals.spent_usd_nanos) == (
        False,
        None,
        2,
        121 * CENT,
    )


# 4. release, idempotency ---------------------------------------------------------------------------------------


def test_release_frees_the_reservation_and_closing_twice_counts_once(ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=USD_NANOS)
    failed = ledger.reserve("team", limits, Usage(70 * CENT, 700), run_id="run-1", step="draft")
    ledger.release(failed)
    totals = ledger.totals("team")
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos, totals.reserved_tokens) == (0, 0, 0)
    (entry,) = ledger.entries()
    assert (entry.state, entry.actual, entry.closed_at is not None) == ("released", None, True)
    # closing a closed reservation again changes nothing
    ledger.release(failed)
    assert ledger.reconcile(failed, Usage(70 * CENT, 700)) is False
    assert ledger.totals("team") == totals
    assert ledger.entries() == [entry]

    over = ledger.reserve("team", limits, Usage(10 * CENT, 100), run_id="run-1", step="review")
    assert ledger.reconcile(over, Usage(20 * CENT, 100)) is True
    after_first = (ledger.totals("team"), ledger.entries())
    assert ledger.reconcile(over, Usage(90 * CENT, 900)) is True  # the first result, not a second spend
    ledger.release(over)
    assert (ledger.totals("team"), ledger.entries()) == after_first
    assert after_first[0].spent_usd_nanos == 20 * CENT and after_first[0].overshoots == 1
    assert_consistent(ledger, "team")


def test_every_backend_records_one_mixed_scenario_identically(ledger: BudgetLedger) -> None:
    """Two runs over two scopes: an overshoot, a release and a recover, then the filters and counters, compared
    with literal values (so both backends give the very same records)."""
    limits = Limits(max_usd_nanos=USD_NANOS, max_tokens=1000)
    over = ledger.reserve("mix-a", limits, Usage(10 * CENT, 100), run_id="run-1", step="s1")
    failed = ledger.reserve("mix-b", limits, Usage(20 * CENT, 200), run_id="run-1", step="s2")
    ledger.reserve("mix-a", limits, Usage(30 * CENT, 300), run_id="run-2", step="s3")
    ledger.reserve("mix-a", limits, Usage(5 * CENT, 50), run_id="run-1", step="s4")
    assert ledger.reconcile(over, Usage(15 * CENT, 90)) is True
    ledger.release(failed)
    assert ledger.recover("run-1") == 1  # only s4 was still open

    def records(run_id: str | None, scope: str | None) -> list[tuple[str, str, str, Usage | None, bool]]:
        return [(e.step, e.scope, e.state, e.actual, e.overshoot) for e in ledger.entries(run_id=run_id, scope=scope)]

    assert records("run-1", "mix-a") == [
        ("s1", "mix-a", "reconciled", Usage(15 * CENT, 90), True),
        ("s4", "mix-a", "recovered", Usage(5 * CENT, 50), False),
    ]
    assert records("run-1", "mix-b") == [("s2", "mix-b", "released", None, False)]
    assert records("run-2", "mix-b") == []
    assert [step for step, *_ in records(None, "mix-a")] == ["s1", "s3", "s4"]
    assert [step for step, *_ in records("run-1", None)] == ["s1", "s2", "s4"]
    reason = "an overshoot at run 'run-1' step 's1' (reserved $0.10 / 100 tokens, actual $0.15 / 90 tokens)"
    # the recover kept the halt (and its reason) that the overshoot set
    assert ledger.totals("mix-a") == ScopeTotals("mix-a", 20 * CENT, 140, 30 * CENT, 300, 1, True, reason)
    assert ledger.totals("mix-b") == ScopeTotals("mix-b", 0, 0, 0, 0, 0, False, None)
    with pytest.raises(UsageLimitExceededError, match="was halted by an overshoot at run 'run-1' step 's1'"):
        ledger.reserve("mix-a", limits, Usage(1, 1), run_id="run-3", step="s5")
    assert ledger.resume("mix-a") is True
    # exactly up to both limits: 20 + 30 + 50 cents, 140 + 300 + 560 tokens
    ledger.reserve("mix-a", limits, Usage(50 * CENT, 560), run_id="run-3", step="s5")
    with pytest.raises(UsageLimitExceededError, match="would total 1001"):
        ledger.reserve("mix-a", limits, Usage(0, 1), run_id="run-3", step="s6")
    assert_consistent(ledger, "mix-a")
    assert_consistent(ledger, "mix-b")


def test_dimensions_are_recorded_with_each_entry(ledger: BudgetLedger) -> None:
    """What a spend is reported by (a partition, a scheduled day) rides on its entry; it is never part of the scope."""
    dims = {"partition": "2026-11-01", "scheduled_day": "2026-11-02"}
    tagged = ledger.reserve("team", Limits(), Usage(CENT, 1), run_id="run-1", step="draft", dimensions=dims)
    ledger.reconcile(tagged, Usage(CENT, 1))
    ledger.reserve("team", Limits(), Usage(CENT, 1), run_id="run-1", step="plain")
    assert [(e.step, e.dimensions) for e in ledger.entries(scope="team")] == [("draft", dims), ("plain", {})]
    with pytest.raises(TypeError, match="reserve: dimensions must map str to str"):
        ledger.reserve("team", Limits(), Usage(CENT, 1), run_id="run-1", step="x", dimensions={"day": 1})  # type: ignore[dict-item]


def test_a_ledger_knows_its_id_and_a_deleted_file_gets_a_new_one(backend: Backend, ledger: BudgetLedger) -> None:
    identified = cast(IdentifiedLedger, ledger)
    first = identified.ledger_id()
    assert len(first) == 32 and identified.ledger_id() == first
    other = backend.open()
    try:
        assert other.ledger_id() == first  # type: ignore[attr-defined]
    finally:
        other.close()
    if backend.kind == "sqlite":  # deleted while this object holds it open: noticed, and created again
        for leftover in Path(backend.location).parent.glob(f"{Path(backend.location).name}*"):
            leftover.unlink()
    else:
        backend.drop_tables()
    second = identified.ledger_id()
    assert second != first and ledger.entries() == []


def test_a_version_1_sqlite_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """CREATE TABLE flujo_budget_scopes (scope TEXT PRIMARY KEY, spent_usd_nanos INTEGER NOT NULL DEFAULT 0,
                spent_tokens INTEGER NOT NULL DEFAULT 0, reserved_usd_nanos INTEGER NOT NULL DEFAULT 0,
                reserved_tokens INTEGER NOT NULL DEFAULT 0, overshoots INTEGER NOT NULL DEFAULT 0,
                halted INTEGER NOT NULL DEFAULT 0, halted_reason TEXT);
            CREATE TABLE flujo_budget_entries (id TEXT PRIMARY KEY, scope TEXT NOT NULL, run_id TEXT NOT NULL,
                step TEXT NOT NULL, reserved_usd_nanos INTEGER NOT NULL, reserved_tokens INTEGER NOT NULL,
                actual_usd_nanos INTEGER, actual_tokens INTEGER, state TEXT NOT NULL, overshoot INTEGER NOT NULL
                DEFAULT 0, created_at REAL NOT NULL, closed_at REAL);
            INSERT INTO flujo_budget_scopes (scope, spent_usd_nanos, spent_tokens) VALUES ('team', 5, 1);
            INSERT INTO flujo_budget_entries VALUES ('e1', 'team', 'run-0', 'old', 5, 1, 5, 1, 'reconciled', 0, 1, 2);
            PRAGMA user_version = 1;"""
        )
    ledger = SqliteBudgetLedger(path)
    try:
        (old,) = ledger.entries()
        assert (old.id, old.actual, old.dimensions) == ("e1", Usage(5, 1), {})
        assert ledger.totals("team").spent_usd_nanos == 5 and len(ledger.ledger_id()) == 32
        ledger.reserve("team", Limits(), Usage(1, 1), run_id="run-1", step="new", dimensions={"partition": "en"})
        assert ledger.entries(run_id="run-1")[0].dimensions == {"partition": "en"}
        admitted = ledger.admit([("team", Limits())], Usage(1, 1), ticket="t1", lease_s=1.0, run_id="run-1", step="q")
        assert isinstance(admitted, list)  # the queue's table was added too
    finally:
        ledger.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)


def test_an_unknown_reservation_is_an_error(backend: Backend, ledger: BudgetLedger) -> None:
    stranger = Reservation("0" * 32, "team", "run-9", "draft", CENT, 1)
    with pytest.raises(
        StorageError, match=r"Reservation '0{32}' \(scope 'team', run 'run-9', step 'draft'\) is not in"
    ):
        ledger.reconcile(stranger, Usage(CENT, 1))
    with pytest.raises(StorageError, match="Reconcile or release it with the ledger that reserved it"):
        ledger.release(stranger)
    assert backend.row_counts() == (0, 0)


# 5. contention ---------------------------------------------------------------------------------------------------


def test_sixteen_processes_never_overspend_nor_lose_an_update(backend: Backend, ledger: BudgetLedger) -> None:
    procs, cycles = 16, 40
    limits = Limits(max_usd_nanos=USD_NANOS, max_tokens=20_000)
    barrier = SPAWN.Barrier(procs)
    out: Queue[tuple[int, int, int]] = SPAWN.Queue()
    workers = [start(contend, backend, "shared", limits, w, cycles, barrier, out) for w in range(procs)]
    try:
        results = [out.get(timeout=300) for _ in workers]
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    ok = sum(r[1] for r in results)
    refused = sum(r[2] for r in results)
    assert sorted(r[0] for r in results) == list(range(procs))
    assert ok + refused == procs * cycles
    assert refused > 0  # the limit was hit
    entries = ledger.entries(scope="shared")
    assert len(entries) == ok
    assert {e.state for e in entries} == {"reconciled"}
    spent_usd = sum(e.actual.usd_nanos for e in entries if e.actual is not None)
    spent_tokens = sum(e.actual.tokens for e in entries if e.actual is not None)
    assert spent_usd <= USD_NANOS and spent_tokens <= 20_000
    totals = ledger.totals("shared")
    assert (totals.spent_usd_nanos, totals.spent_tokens) == (spent_usd, spent_tokens)
    assert (totals.reserved_usd_nanos, totals.reserved_tokens, totals.overshoots) == (0, 0, 0)
    assert_consistent(ledger, "shared")


def test_many_threads_share_one_ledger_object(ledger: BudgetLedger) -> None:
    limits = Limits(max_usd_nanos=50 * CENT)
    refused = 0
    lock = threading.Lock()

    def cycles(worker: int) -> None:
        nonlocal refused
        for i in range(30):
            try:
                reservation = ledger.reserve("threads", limits, Usage(CENT, 1), run_id=f"t{worker}", step=f"s{i}")
            except UsageLimitExceededError:
                with lock:
                    refused += 1
                continue
            ledger.reconcile(reservation, Usage(CENT // 2, 1))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(cycles, range(8)))
    entries = ledger.entries(scope="threads")
    assert len(entries) + refused == 8 * 30
    assert refused > 0
    assert ledger.totals("threads").spent_usd_nanos == len(entries) * (CENT // 2) <= 50 * CENT
    assert_consistent(ledger, "threads")


# 6. crash safety -----------------------------------------------------------------------------------------------


def test_recover_closes_a_killed_runs_open_reservations_once(backend: Backend, ledger: BudgetLedger) -> None:
    ready = SPAWN.Event()
    proc = start(reserve_and_hang, backend, "crashed-run", ready)
    try:
        assert ready.wait(120), "the worker did not reserve in time"
        kill(proc)
    finally:
        if proc.is_alive():
            proc.kill()
    other = ledger.reserve("crash", Limits(), Usage(CENT, 1), run_id="live-run", step="draft")
    open_before = [e for e in ledger.entries(run_id="crashed-run") if e.state == "reserved"]
    assert sorted(e.step for e in open_before) == ["in-flight-1", "in-flight-2"]
    assert ledger.totals("crash").reserved_usd_nanos == 70 * CENT + CENT

    assert ledger.recover("crashed-run") == 2
    by_step = {e.step: e for e in ledger.entries(run_id="crashed-run")}
    assert by_step["done"].state == "reconciled"
    for step in ("in-flight-1", "in-flight-2"):
        entry = by_step[step]
        assert (entry.state, entry.actual, entry.overshoot) == ("recovered", entry.reserved, False)
    crash, crash_other = ledger.totals("crash"), ledger.totals("crash-other")
    assert (crash.spent_usd_nanos, crash.spent_tokens, crash.reserved_usd_nanos) == (90 * CENT, 950, CENT)
    assert (crash_other.spent_usd_nanos, crash_other.spent_tokens, crash_other.reserved_usd_nanos) == (5 * CENT, 50, 0)
    assert ledger.entries(run_id="live-run")[0].state == "reserved"  # another run's reservation is left alone

    # never counted twice: a second recover, or a late reconcile of a recovered reservation, changes nothing
    assert ledger.recover("crashed-run") == 0
    entry = by_step["in-flight-1"]
    late = Reservation(entry.id, entry.scope, entry.run_id, entry.step, entry.reserved.usd_nanos, entry.reserved.tokens)
    assert ledger.reconcile(late, Usage(1, 1)) is False
    assert (ledger.totals("crash"), ledger.totals("crash-other")) == (crash, crash_other)
    assert ledger.recover("no-such-run") == 0
    ledger.release(other)
    assert_consistent(ledger, "crash")
    assert_consistent(ledger, "crash-other")


def test_a_process_killed_inside_a_write_transaction_leaves_nothing(backend: Backend, ledger: BudgetLedger) -> None:
    done = ledger.reserve("locked", Limits(), Usage(20 * CENT, 2), run_id="run-1", step="draft")
    ledger.reconcile(done, Usage(10 * CENT, 1))
    ready = SPAWN.Event()
    proc = start(hold_write_lock_and_hang, backend, "locked", ready)
    try:
        assert ready.wait(120), "the worker did not take the lock in time"
        impatient = backend.open(timeout_s=0.5)
        with pytest.raises(StorageError, match="stayed locked by another") as caught:
            impatient.reserve("locked", Limits(), Usage(CENT, 1), run_id="run-2", step="waits")
        assert "raise busy_timeout." in str(caught.value) or "raise lock_timeout." in str(caught.value)
        impatient.close()
        kill(proc)
    finally:
        if proc.is_alive():
            proc.kill()
    # the lock died with its process, and so did its uncommitted change
    ledger.reserve("locked", Limits(), Usage(CENT, 1), run_id="run-2", step="after")
    totals = ledger.totals("locked")
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos) == (10 * CENT, CENT)
    assert [e.step for e in ledger.entries(scope="locked")] == ["draft", "after"]
    assert_consistent(ledger, "locked")


# persistence and storage errors ------------------------------------------------------------------------------


def test_sixteen_processes_create_the_ledger_at_once(backend: Backend) -> None:
    procs = 16
    barrier = SPAWN.Barrier(procs)
    out: Queue[str] = SPAWN.Queue()
    workers = [start(open_and_reserve, backend, barrier, out) for _ in range(procs)]
    try:
        for worker in workers:
            worker.join(180)
        assert [worker.exitcode for worker in workers] == [0] * procs
        ids = {out.get(timeout=10) for _ in workers}
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    ledger = backend.open()
    try:
        assert {e.id for e in ledger.entries()} == ids and len(ids) == procs
        assert ledger.totals("first").reserved_tokens == procs
    finally:
        ledger.close()


def test_a_new_ledger_object_sees_what_another_wrote(backend: Backend, ledger: BudgetLedger) -> None:
    reservation = ledger.reserve("team", Limits(), Usage(CENT, 5), run_id="run-1", step="draft")
    ledger.close()
    again = backend.open()
    try:
        assert again.reconcile(reservation, Usage(CENT, 5)) is False
        assert again.totals("team").spent_tokens == 5
    finally:
        again.close()
    assert ledger.totals("team").spent_tokens == 5  # a closed ledger object reconnects


def test_sqlite_ledger_creates_its_folder_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "budget.db"
    ledger = SqliteBudgetLedger(path)
    ledger.reserve("team", Limits(), Usage(1, 1), run_id="run-1", step="draft")
    ledger.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT COUNT(*) FROM flujo_budget_entries").fetchone() == (1,)


def test_sqlite_ledger_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    path.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(StorageError) as caught:
        SqliteBudgetLedger(path)
    message = str(caught.value)
    assert message.startswith(f"The budget ledger {str(path)!r} cannot be used: file is not a database.")
    assert "or point the ledger at a new file" in message


def test_sqlite_ledger_written_by_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "budget.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="has schema version 99, newer than this flujo_dagster understands"):
        SqliteBudgetLedger(path)


def test_postgres_ledger_on_an_unreachable_server() -> None:
    with pytest.raises(StorageError) as caught:
        PostgresBudgetLedger("postgresql://someone:secret@127.0.0.1:1/nothing", connect_timeout=timedelta(seconds=2))
    message = str(caught.value)
    assert message.startswith(
        "Cannot connect to the budget ledger in PostgreSQL postgresql://someone:***@127.0.0.1:1/nothing "
        "(tables flujo_budget_scopes, flujo_budget_entries) (connection to server at"
    )
    assert "secret" not in message and "Check that the server is running" in message
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="table_prefix 'Bad-Prefix' is not allowed"):
        PostgresBudgetLedger("postgresql://u@h/db", table_prefix="Bad-Prefix")


def test_connections_of_finished_threads_are_closed() -> None:
    opened: list[object] = []
    closed: list[object] = []

    def open_() -> object:
        opened.append(object())
        return opened[-1]

    connections = PerThreadConnections(open_, closed.append, lambda conn: conn not in closed)
    mine = connections.get()
    assert connections.get() is mine  # one per thread, reused
    workers = [threading.Thread(target=connections.get) for _ in range(5)]
    for worker in workers:
        worker.start()
        worker.join()
    assert len(opened) == 6 and closed == opened[1:-1]  # each new one closes those of finished threads
    assert connections.get() is mine and closed == opened[1:-1]
    closed.append(mine)  # e.g. the server dropped it: the next use opens another, closing the last worker's too
    fresh = connections.get()
    assert fresh is not mine and fresh is opened[-1] and set(closed) == set(opened[:-1])
    connections.close_all()
    assert set(closed) == set(opened)


def test_a_sqlalchemy_postgres_url_reaches_the_same_database() -> None:
    """dagster-postgres needs `postgresql+psycopg2://` under SQLAlchemy 2.1; the ledger and the call cache take the
    instance's URL as it is, so they must drop the driver suffix for psycopg2."""
    assert libpq_url("postgresql+psycopg2://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert libpq_url("postgres+psycopg://u@h/db") == "postgres://u@h/db"
    assert libpq_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert libpq_url("dbname=db host=h") == "dbname=db host=h"
    url = os.environ.get("FLUJO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set")
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    ledger = PostgresBudgetLedger(url.replace("postgresql://", "postgresql+psycopg2://", 1), table_prefix=prefix)
    plain = PostgresBudgetLedger(url, table_prefix=prefix)
    try:
        assert ledger.ledger_id() == plain.ledger_id()
    finally:
        ledger.close()
        plain.close()
        conn = psycopg2.connect(url)
        with conn, conn.cursor() as cur:  # only the tables this test made
            cur.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (prefix + "%",))
            for (table,) in cur.fetchall():
                cur.execute(f'DROP TABLE "{table}"')
            cur.execute(f'DROP SEQUENCE IF EXISTS "{prefix}tickets_seq"')
        conn.close()


# --- admission: waiting for reservations in flight, first come first served -------------------------------------------


def test_admission_waits_in_order_refuses_the_hopeless_and_skips_expired_tickets(ledger: BudgetLedger) -> None:
    """Limit 10 cents with 8 in flight: 5 cents must wait; 2 cents would fit but an earlier ticket waits; 11 cents
    could never fit and is refused at once; once the 8 cents settle at 1, both are admitted in order. A ticket whose
    lease lapsed (its process died) holds no one back."""
    assert isinstance(ledger, AdmittingLedger)
    limits = Limits(max_usd_nanos=10 * CENT)

    def admit(cents: int, ticket: str, *, lease_s: float = 60.0, scopes: tuple[str, ...] = ("q",)) -> object:
        claims = [(scope, limits) for scope in scopes]
        return ledger.admit(claims, Usage(cents * CENT, 1), ticket=ticket, lease_s=lease_s, run_id="r", step=ticket)

    flight = ledger.reserve("q", limits, Usage(8 * CENT, 1), run_id="r", step="flight")
    first = admit(5, "first")
    assert isinstance(first, Waiting) and "fits only once requests in flight settle" in first.reason
    second = admit(2, "second")
    assert isinstance(second, Waiting) and "an earlier request is still waiting" in second.reason
    with pytest.raises(UsageLimitExceededError, match="would be exceeded by run 'r' step 'hopeless'"):
        admit(11, "hopeless")
    both_limits = Limits(max_usd_nanos=10 * CENT, max_tokens=5)  # 8 cents in flight: money would wait, tokens never fit
    ledger.reserve("q2", both_limits, Usage(8 * CENT, 1), run_id="r", step="flight")
    with pytest.raises(UsageLimitExceededError, match="max_tokens 5, .*raise the Budget's max_tokens"):
        ledger.admit([("q2", both_limits)], Usage(5 * CENT, 6), ticket="t", lease_s=60.0, run_id="r", step="tokens")
    ledger.reconcile(flight, Usage(1 * CENT, 1))
    assert isinstance(admit(2, "second"), Waiting)  # still behind "first"
    (admitted,) = cast(list[Reservation], admit(5, "first"))
    assert isinstance(admit(2, "second"), list)
    assert ledger.totals("q").reserved_usd_nanos == 7 * CENT and admitted.scope == "q"
    # in two scopes at once: waits in both queues, admitted in both or neither
    assert isinstance(admit(4, "dead", lease_s=1e-6, scopes=("q", "r")), Waiting)  # 1 + 7 + 4 > 10
    time.sleep(0.01)  # past the lease by the database's clock (SQLite's counts milliseconds)
    both = admit(1, "alive", scopes=("r", "q"))  # behind no live ticket: "dead" never renewed its lease
    assert isinstance(both, list) and [r.scope for r in both] == ["r", "q"]
    ledger.leave("dead")
    assert_consistent(ledger, "q")


def test_admission_is_first_come_first_served_across_processes(backend: Backend, ledger: BudgetLedger) -> None:
    """Three tickets queued in order; their processes start in the reverse order and retry at once, and are
    admitted one at a time (each takes the whole limit) in the order of their tickets."""
    assert isinstance(ledger, AdmittingLedger)
    limits = Limits(max_usd_nanos=CENT)
    flight = ledger.reserve("fifo", limits, Usage(CENT, 1), run_id="r", step="flight")
    tickets = ["t1", "t2", "t3"]
    for ticket in tickets:
        queued = ledger.admit([("fifo", limits)], Usage(CENT, 1), ticket=ticket, lease_s=60.0, run_id=ticket, step="s")
        assert isinstance(queued, Waiting)
    out: Queue[str] = SPAWN.Queue()
    workers = [SPAWN.Process(target=queue_and_report, args=(backend, "fifo", limits, t, out)) for t in tickets[::-1]]
    for worker in workers:
        worker.start()
    ledger.release(flight)
    order = [out.get(timeout=120) for _ in tickets]
    for worker in workers:
        worker.join(timeout=60)
    assert order == tickets
    assert ledger.totals("fifo").reserved_usd_nanos == 0
