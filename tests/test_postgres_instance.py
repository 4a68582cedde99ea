"""A Dagster instance whose `dagster.yaml` keeps runs, event logs and schedules in PostgreSQL (dagster-postgres):
its runs (in process and on the multiprocess executor), the budget ledger's and the agent-call cache's own tables
and its schedules' state all live in that one database, however the instance reaches it.

These tests run when FLUJO_TEST_POSTGRES_URL is set (e.g. postgresql://postgres@127.0.0.1:5432/test) and fail
when that server cannot be reached; each test creates a database of its own (a unique name) and drops it. Without
dagster-postgres (the `postgres` extra) they fail, and skip only on CI's highest run (tests/conftest.py)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, execute_job, reconstructable
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import InstigatorStatus, TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, load_remote_repo
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._scheduler.scheduler import launch_scheduled_runs
from dagster._time import get_current_datetime

from flujo_dagster import load_final_context, run_pipeline
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.adapter.storage.call_cache import InstanceCallCache
from flujo_dagster.adapter.storage.call_cache_postgres import PostgresCallCache
from flujo_dagster.adapter.storage.instance_db import shared_place
from flujo_dagster.names import CACHE_HITS
from flujo_dagster.pricing import PostgresBudgetLedger
from flujo_dagster.pricing.ledger import libpq_url
from tests.conftest import require_module
from tests.postgres_defs import Note, counting, notes, notes_job

POSTGRES_URL = os.environ.get("FLUJO_TEST_POSTGRES_URL", "")
ROOT = Path(__file__).resolve().parent.parent
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
FLUJO_TABLES = {
    "flujo_budget_scopes",
    "flujo_budget_entries",
    "flujo_budget_meta",
    "flujo_call_cache",
    "flujo_call_cache_claims",
}


def _admin() -> psycopg2.extensions.connection:
    """An autocommit connection to FLUJO_TEST_POSTGRES_URL's database; the test fails when it is unreachable."""
    try:
        conn = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"FLUJO_TEST_POSTGRES_URL is set but its server cannot be reached: {' '.join(str(exc).split())}")
    conn.autocommit = True
    return conn


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh, empty database of this test's own (dropped afterwards, its connections with it)."""
    if not POSTGRES_URL:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set: set it (postgresql://user@host:port/db) to test PostgreSQL")
    require_module("dagster_postgres", extra="postgres")  # each user of this database opens a dagster-postgres instance
    name = f"flujo_pgi_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def driver_url(url: str) -> str:
    """`url` naming the psycopg2 driver, as dagster-postgres needs it with SQLAlchemy 2.1 (whose default driver for
    `postgresql://` is psycopg 3, which dagster-postgres does not install)."""
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def postgres_db(url: str, **extra: object) -> dict[str, object]:
    """Dagster's `postgres_db` pieces for `url` (the psycopg2 driver, see `driver_url`)."""
    parts = urlsplit(url)
    pieces: dict[str, object] = {
        "username": parts.username or "postgres",
        "hostname": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "db_name": parts.path.lstrip("/"),
        "scheme": "postgresql+psycopg2",
    }
    if parts.password:
        pieces["password"] = parts.password
    return {**pieces, **extra}


def open_instance(home: Path, storage: dict[str, object]) -> DagsterInstance:
    """The instance of a `dagster.yaml` in `home` with `storage` (and telemetry off)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}, **storage}))
    return DagsterInstance.from_config(str(home))


@pytest.fixture
def pg_home(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME whose dagster.yaml keeps run, event-log and schedule storage in `database`
    (`storage: postgres:` with `postgres_db` pieces, as docs/deploy.md shows), runs queued for a daemon."""
    home = tmp_path / "dagster_home"
    storage = {
        "storage": {"postgres": {"postgres_db": postgres_db(database)}},
        "run_coordinator": {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"},
    }
    open_instance(home, storage).dispose()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def pg_instance(pg_home: Path) -> Iterator[DagsterInstance]:
    with DagsterInstance.from_config(str(pg_home)) as instance:
        yield instance


def query(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Rows of `sql` in the database at `url`, read directly (not through Dagster or flujo)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        rows: list[tuple[object, ...]] = cur.fetchall()
    conn.close()
    return rows


def tables(url: str) -> set[str]:
    rows = query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {str(name) for (name,) in rows}


def no_local_storage(home: Path) -> None:
    """Nothing of the instance (runs, event logs, schedules, ledger, cache) was written to SQLite files."""
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*.db")) == []
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*.sqlite")) == []


def test_runs_in_process_and_on_the_multiprocess_executor_are_stored_in_postgres(
    pg_instance: DagsterInstance, pg_home: Path, database: str
) -> None:
    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(pg_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(pg_instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    resources = {"agent_runtime": counting([])}
    in_process = run_pipeline(notes, {"topic": "owls"}, instance=pg_instance, resources=resources, log_level="CRITICAL")
    inputs = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}
    with execute_job(reconstructable(notes_job), pg_instance, run_config={**inputs, **QUIET}) as result:
        assert result.success
        multiprocess = result.run_id
    stored = dict(query(database, "SELECT run_id, status FROM runs"))
    assert stored == {in_process.run_id: "SUCCESS", multiprocess: "SUCCESS"}
    for run_id in (in_process.run_id, multiprocess):
        sql = "SELECT step_key FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_SUCCESS'"
        succeeded = query(database, sql, run_id)
        assert sorted(key for (key,) in succeeded) == ["draft", "flujo_context", "flujo_inputs", "outline"]
    # each step of the multiprocess run ran in a process of its own, writing its events to the same database
    workers = pg_instance.all_logs(multiprocess, of_type=DagsterEventType.STEP_WORKER_STARTED)
    assert len(workers) == 4
    no_local_storage(pg_home)


def test_the_ledger_and_the_call_cache_keep_their_tables_in_the_instance_database(
    pg_instance: DagsterInstance, pg_home: Path, database: str
) -> None:
    ledger = InstanceLedger().for_instance(pg_instance)
    cache = InstanceCallCache().for_instance(pg_instance)
    assert isinstance(ledger, PostgresBudgetLedger) and isinstance(cache, PostgresCallCache)
    requests: list[str] = []
    resources = {"agent_runtime": counting(requests)}
    first = run_pipeline(notes, {"topic": "owls"}, instance=pg_instance, resources=resources, log_level="CRITICAL")
    assert first.success and len(requests) == 2
    # the budgeted run reserved and reconciled each request in the instance's database
    entries = ledger.entries(run_id=first.run_id)
    assert sorted(e.state for e in entries) == ["reconciled", "reconciled"]
    totals = ledger.totals(f"run:{first.run_id}")
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos) == (200_000_000, 0)  # two answers at $0.1
    second = run_pipeline(notes, {"topic": "owls"}, instance=pg_instance, resources=resources, log_level="CRITICAL")
    assert second.success and second.context == first.context
    assert len(requests) == 2  # served from the cache: no request, nothing reserved
    assert ledger.entries(run_id=second.run_id) == []
    # one database: Dagster's tables and flujo's, side by side
    assert {"runs", "event_logs", "instigators", "job_ticks"} | FLUJO_TABLES <= tables(database)
    assert query(database, "SELECT count(*) FROM flujo_call_cache") == [(2,)]
    assert query(database, "SELECT count(*) FROM flujo_budget_entries WHERE run_id = %s", first.run_id) == [(2,)]
    no_local_storage(pg_home)


def test_a_budgeted_multiprocess_run_reserves_there_and_its_repeat_is_served_from_the_cache(
    pg_instance: DagsterInstance, database: str
) -> None:
    inputs = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}
    run_ids = []
    for _ in range(2):
        with execute_job(reconstructable(notes_job), pg_instance, run_config={**inputs, **QUIET}) as result:
            assert result.success
            run_ids.append(result.run_id)
    first, second = run_ids
    # every request of the step processes was reserved and reconciled in the instance's database
    rows = query(database, "SELECT state, count(*) FROM flujo_budget_entries WHERE run_id = %s GROUP BY state", first)
    assert rows == [("reconciled", 2)]
    # the repeat made no request: nothing reserved, both agent steps report a cache hit
    assert query(database, "SELECT count(*) FROM flujo_budget_entries WHERE run_id = %s", second) == [(0,)]
    outputs = pg_instance.all_logs(second, of_type=DagsterEventType.STEP_OUTPUT)
    hits = [
        e.dagster_event.step_output_data.metadata[CACHE_HITS].value  # type: ignore[union-attr]
        for e in outputs
        if CACHE_HITS in e.dagster_event.step_output_data.metadata  # type: ignore[union-attr]
    ]
    assert hits == [1, 1]
    outline = "answer to Outline otters"
    expected = Note(topic="otters", outline=outline, draft=f"answer to Draft from {outline}")
    assert load_final_context(notes, second, instance=pg_instance) == expected


# Dagster's own schedule snapshot reads its deprecated `environment_vars` when a code location loads
@pytest.mark.filterwarnings("ignore:.*environment_vars.*:DeprecationWarning")
def test_a_schedules_state_and_ticks_are_stored_in_postgres(pg_home: Path, database: str) -> None:
    target = LoadableTargetOrigin(module_name="tests.postgres_defs", attribute="defs", working_directory=str(ROOT))
    load_target = InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(target, location_name="pg"))
    with DagsterInstance.from_config(str(pg_home)) as instance:
        with create_test_daemon_workspace_context(load_target, instance) as workspace:
            schedule = load_remote_repo(workspace, "__repository__").get_schedule("pg_stamped_schedule")
            instance.start_schedule(schedule)
            # one scheduler iteration two minutes on: a tick at each minute boundary passed, each queuing a run
            end = get_current_datetime() + timedelta(minutes=2)
            list(launch_scheduled_runs(workspace, logging.getLogger("flujo.test"), end, iteration_times={}))
    rows = query(database, "SELECT status FROM instigators WHERE instigator_type = 'SCHEDULE'")
    assert rows == [("RUNNING",)]
    # a fresh instance of the same dagster.yaml (another process, another machine) sees the same state
    with DagsterInstance.from_config(str(pg_home)) as other:
        (state,) = other.all_instigator_state()
        assert state.instigator_name == "pg_stamped_schedule" and state.status == InstigatorStatus.RUNNING
        ticks = other.get_ticks(state.instigator_origin_id, state.selector_id)
        assert ticks and {t.status for t in ticks} == {TickStatus.SUCCESS}
        queued = other.get_runs()
        assert queued and {r.status for r in queued} == {DagsterRunStatus.QUEUED}
        assert {r.job_name for r in queued} == {"pg_stamped"}
    assert query(database, "SELECT count(*) FROM job_ticks") == [(len(ticks),)]
    no_local_storage(pg_home)


STORAGE_FORMS = {
    "storage_postgres_url": lambda url: {"storage": {"postgres": {"postgres_url": driver_url(url)}}},
    "storage_postgres_db": lambda url: {"storage": {"postgres": {"postgres_db": postgres_db(url)}}},
    "storage_postgres_db_with_params": lambda url: {
        "storage": {"postgres": {"postgres_db": postgres_db(url, params={"application_name": "flujo"})}}
    },
    "legacy_run_storage_keys": lambda url: {
        key: {"module": f"dagster_postgres.{module}", "class": cls, "config": {"postgres_url": driver_url(url)}}
        for key, module, cls in (
            ("run_storage", "run_storage", "PostgresRunStorage"),
            ("event_log_storage", "event_log", "PostgresEventLogStorage"),
            ("schedule_storage", "schedule_storage", "PostgresScheduleStorage"),
        )
    },
    "legacy_run_storage_postgres_db": lambda url: {
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": {"postgres_db": postgres_db(url)},
        }
    },
}


@pytest.mark.parametrize("form", sorted(STORAGE_FORMS))
def test_the_instance_database_is_found_however_the_instance_reaches_it(
    form: str, tmp_path: Path, database: str
) -> None:
    with open_instance(tmp_path / form, STORAGE_FORMS[form](database)) as instance:
        place = shared_place(instance, "budgets.sqlite")
        assert place.postgres
        assert query(place.where, "SELECT current_database()") == [(database.rsplit("/", 1)[1],)]
        ledger = InstanceLedger().for_instance(instance)
        cache = InstanceCallCache().for_instance(instance)
        assert isinstance(ledger, PostgresBudgetLedger) and isinstance(cache, PostgresCallCache)
        assert ledger.ledger_id()  # its tables exist and answer
    assert FLUJO_TABLES <= tables(database)


def test_without_postgres_the_shared_tables_are_sqlite_files_in_the_storage_directory(
    instance: DagsterInstance,
) -> None:
    place = shared_place(instance, "budgets.sqlite")
    assert not place.postgres
    assert place.where == str(Path(instance.storage_directory()) / "flujo" / "budgets.sqlite")


def test_a_driver_qualified_scheme_is_read_as_libpq_reads_urls() -> None:
    assert libpq_url("postgresql+psycopg2://u:p@h:5432/db?x=1") == "postgresql://u:p@h:5432/db?x=1"
    assert libpq_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert libpq_url("postgres://u@h/db") == "postgres://u@h/db"
    assert libpq_url("host=h dbname=db") == "host=h dbname=db"
