"""Capacity on this machine, for docs/deploy.md.

(1) ops per second: a chain of N function steps, one op each, timed from launch to the run's end, on the
in-process, multiprocess (forkserver) and Celery executors, with a persistent SQLite instance and a PostgreSQL one
(dagster-postgres `storage: postgres:` in a database the benchmark creates and drops).
(2) ledger reservations per second under contention: K spawned processes, started together on a barrier, each
running M reserve+reconcile cycles against one scope of one ledger (SQLite file; PostgreSQL tables); total cycles
over the wall time from the barrier to the last process's end.
(3) run start overhead: from the launch (the `execute_job` call) to the first step's STEP_START event, per
executor and storage. Celery: a worker (`dagster-celery worker start`, concurrency 2) started by the benchmark on
RabbitMQ with a queue of its own, results in Redis; stopped at the end.

Medians of --reps repetitions. Prints a table, then one JSON line:
{"bench": "capacity", "ops": N, "ops_per_s": {executor: {storage: x}}, "ledger_reservations_per_s":
 {"sqlite": x, "postgres": x}, "run_start_s": {"in_process": x, "multiprocess": x, "celery": x}} (run start on the
PostgreSQL instance; null where not measured, with the reason on stderr).

    PYTHONPATH=. .venv/bin/python benchmarks/capacity.py [--reps 3] [--ops 20] [--procs 8] [--cycles 100]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--broker pyamqp://guest:guest@127.0.0.1:5672//]
        [--backend redis://127.0.0.1:6379/0] [--no-celery]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import yaml
from celery import Celery
from dagster import (
    DagsterEventType,
    DagsterInstance,
    JobDefinition,
    execute_job,
    in_process_executor,
    multiprocess_executor,
    reconstructable,
)
from dagster_celery import celery_executor
from pydantic import BaseModel, create_model

from flujo_dagster import Pipeline, build_definitions, step
from flujo_dagster.pricing.ledger import BudgetLedger, Limits, Usage
from flujo_dagster.pricing.ledger_postgres import PostgresBudgetLedger
from flujo_dagster.pricing.ledger_sqlite import SqliteBudgetLedger

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OPS = int(os.environ.get("CAPACITY_OPS", "20"))
"""The chain's length; set by `main` from --ops before any process (step process, Celery worker) loads the jobs."""
QUEUE = os.environ.get("CAPACITY_QUEUE", "")
BROKER = os.environ.get("CAPACITY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("CAPACITY_BACKEND", "redis://127.0.0.1:6379/0")
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
LIMITS = Limits(max_usd_nanos=10**15, max_tokens=10**15)  # never reached here
AMOUNT, ACTUAL = Usage(usd_nanos=2_000_000, tokens=1_000), Usage(usd_nanos=1_500_000, tokens=800)
EXECUTORS = ("in_process", "multiprocess", "celery")
STORAGES = ("sqlite", "postgres")


def _bump(**keys: int) -> int:
    """The one key read, plus one."""
    (value,) = keys.values()
    return value + 1


fields: dict[str, Any] = {f"k{i}": (int, 0) for i in range(OPS + 1)}
Chain: type[BaseModel] = create_model("Chain", **fields)
chain = Pipeline(
    "chain",
    context=Chain,
    steps=[step(name=f"s{i}", input_keys=[f"k{i}"], output_keys=[f"k{i + 1}"])(_bump) for i in range(OPS)],
)
_EXECUTOR_DEFS = {
    "in_process": in_process_executor,
    "multiprocess": multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["flujo_dagster", "pydantic_ai"]}}}
    ),
    "celery": celery_executor.configured(
        {"broker": BROKER, "backend": BACKEND, "config_source": {"task_default_queue": QUEUE}}
    ),
}


def _job(executor: str) -> JobDefinition:
    return build_definitions(pipelines=[chain], executor=_EXECUTOR_DEFS[executor]).resolve_job_def("chain")


def in_process_job() -> JobDefinition:
    """The chain on the in-process executor."""
    return _job("in_process")


def multiprocess_job() -> JobDefinition:
    """The chain on the multiprocess executor (forkserver)."""
    return _job("multiprocess")


def celery_job() -> JobDefinition:
    """The chain on dagster-celery's executor, on this benchmark's queue."""
    return _job("celery")


TARGETS: dict[str, Callable[[], JobDefinition]] = {
    "in_process": in_process_job,
    "multiprocess": multiprocess_job,
    "celery": celery_job,
}


def timed_run(executor: str, instance: DagsterInstance) -> tuple[float, float]:
    """(ops per second, seconds from launch to the first STEP_START) of one run of the chain."""
    config = {"ops": {"flujo_inputs": {"config": {"inputs": {"k0": 0}}}}, **QUIET}
    launched = time.time()
    with execute_job(reconstructable(TARGETS[executor]), instance=instance, run_config=config) as result:
        ended = time.time()
        assert result.success, executor
        run_id = result.run_id
    starts = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
    first = min(e.timestamp for e in starts)
    return len(starts) / (ended - launched), first - launched  # the chain's ops and flujo's inputs/context ops


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on `admin_url`'s server, dropped at the end (its connections with it)."""
    name = f"flujo_capacity_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def instance_home(root: Path, storage: str, url: str) -> Path:
    """A DAGSTER_HOME with SQLite storage (the default) or `storage: postgres:` on `url` (the psycopg2 driver
    named, as dagster-postgres needs it under SQLAlchemy 2.1)."""
    home = root / storage
    home.mkdir()
    config: dict[str, Any] = {"telemetry": {"enabled": False}}
    if storage == "postgres":
        config["storage"] = {"postgres": {"postgres_url": "postgresql+psycopg2://" + url.split("://", 1)[1]}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@contextmanager
def celery_worker(home: Path) -> Iterator[None]:
    """A Celery worker on this benchmark's queue (its own process group), answering pings; stopped at the end."""
    settings = {"broker": BROKER, "backend": BACKEND, "config_source": {"task_default_queue": QUEUE}}
    (home / "celery.yaml").write_text(yaml.safe_dump({"execution": {"config": settings}}))
    argv = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(home / "celery.yaml")]
    argv += ["-n", f"{QUEUE}@%h", "-q", QUEUE, "--", "--concurrency=2", "--without-mingle", "--without-gossip"]
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    with (home / "worker.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        app, deadline = Celery(broker=BROKER), time.monotonic() + 120
        while not any(QUEUE in name for reply in app.control.ping(timeout=1.0) or [] for name in reply):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not answer: {(home / 'worker.log').read_text()[-2000:]}")
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def contender(kind: str, where: str, cycles: int, barrier: Barrier, out: Queue[tuple[float, float]]) -> None:
    """One contending process: open the ledger, warm up, wait for the others, run `cycles` cycles on one scope,
    report (start, end) in wall-clock seconds."""
    ledger: BudgetLedger = SqliteBudgetLedger(where) if kind == "sqlite" else PostgresBudgetLedger(where)
    pid = os.getpid()
    for i in range(3):
        ledger.reconcile(ledger.reserve("contended", LIMITS, AMOUNT, run_id=f"warm-{pid}", step=f"w{i}"), ACTUAL)
    barrier.wait()
    start = time.time()
    for i in range(cycles):
        ledger.reconcile(ledger.reserve("contended", LIMITS, AMOUNT, run_id=f"run-{pid}", step=f"s{i}"), ACTUAL)
    out.put((start, time.time()))
    ledger.close()


def reservations_per_s(kind: str, where: str, procs: int, cycles: int) -> float:
    """Reserve+reconcile cycles per second of `procs` processes contending on one scope."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=contender, args=(kind, where, cycles, barrier, out)) for _ in range(procs)]
    for worker in workers:
        worker.start()
    spans = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    return procs * cycles / (max(end for _, end in spans) - min(start for start, _ in spans))


def measure_runs(homes: dict[str, Path], executors: list[str], reps: int) -> dict[str, dict[str, list[float]]]:
    """Per `executor/storage`: the ops/s samples and the run-start samples."""
    samples: dict[str, dict[str, list[float]]] = {}
    for storage, home in homes.items():
        os.environ["DAGSTER_HOME"] = str(home)
        with DagsterInstance.from_config(str(home)) as instance:
            timed_run("in_process", instance)  # warm up imports and schema work
            for _ in range(reps):
                for executor in executors:
                    ops, start = timed_run(executor, instance)
                    cell = samples.setdefault(f"{executor}/{storage}", {"ops": [], "start": []})
                    cell["ops"].append(ops)
                    cell["start"].append(start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=20)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--broker", default=BROKER)
    parser.add_argument("--backend", default=BACKEND)
    parser.add_argument("--no-celery", action="store_true")
    args = parser.parse_args()
    queue = os.environ.get("CAPACITY_QUEUE") or f"flujo_capacity_{uuid.uuid4().hex[:8]}"
    settings = {"CAPACITY_OPS": str(args.ops), "CAPACITY_QUEUE": queue}
    settings |= {"CAPACITY_BROKER": args.broker, "CAPACITY_BACKEND": args.backend}
    if any(os.environ.get(k) != v for k, v in settings.items()):  # every process must build the same jobs
        os.environ.update(settings)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    report(args)


def report(args: argparse.Namespace) -> None:
    """Measure everything, print the table and the JSON line."""
    executors = [e for e in EXECUTORS if not (e == "celery" and args.no_celery)]
    with tempfile.TemporaryDirectory() as tmp, postgres_database(args.postgres) as url:
        homes = {s: instance_home(Path(tmp), s, url) for s in STORAGES}
        ledgers = {"sqlite": str(Path(tmp) / "ledger" / "budgets.sqlite"), "postgres": url}
        per_s = {
            kind: statistics.median(reservations_per_s(kind, where, args.procs, args.cycles) for _ in range(args.reps))
            for kind, where in ledgers.items()
        }
        if "celery" in executors:
            with celery_worker(homes["postgres"]):
                samples = measure_runs(homes, executors, args.reps)
        else:
            samples = measure_runs(homes, executors, args.reps)
    print_table(args, executors, samples, per_s)


def print_table(
    args: argparse.Namespace, executors: list[str], samples: dict[str, dict[str, list[float]]], per_s: dict[str, float]
) -> None:
    cpus = os.cpu_count()
    print(f"machine: {cpus} cores (shared with other work), {args.reps} repetitions, medians")
    print(f"{'measure':<44} {'executor':<13} {'sqlite':>10} {'postgres':>10}")
    med = {k: {m: statistics.median(v) for m, v in cell.items()} for k, cell in samples.items()}
    for executor in executors:
        ops = [med[f"{executor}/{s}"]["ops"] for s in STORAGES]
        print(f"{f'ops/s, {OPS} function steps + 2 flujo ops':<44} {executor:<13} {ops[0]:>10.1f} {ops[1]:>10.1f}")
    for executor in executors:
        start = [med[f"{executor}/{s}"]["start"] for s in STORAGES]
        print(f"{'run start: launch to first STEP_START (s)':<44} {executor:<13} {start[0]:>10.2f} {start[1]:>10.2f}")
    label = f"ledger reserve+reconcile/s, {args.procs} procs"
    print(f"{label:<44} {'-':<13} {per_s['sqlite']:>10.0f} {per_s['postgres']:>10.0f}")
    if "celery" not in executors:
        print("celery: not measured (--no-celery)", file=sys.stderr)
    line = {
        "bench": "capacity",
        "ops": OPS,
        "ops_per_s": {e: {s: round(med[f"{e}/{s}"]["ops"], 1) for s in STORAGES} for e in executors},
        "ledger_reservations_per_s": {k: round(v) for k, v in per_s.items()},
        "run_start_s": {e: (round(med[f"{e}/postgres"]["start"], 2) if e in executors else None) for e in EXECUTORS},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
