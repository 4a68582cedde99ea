"""What `make deploy-smoke` starts and stops on 127.0.0.1: a fresh PostgreSQL database (the Dagster instance's run,
event-log and schedule storage, and the budget ledger and agent-call cache beside them), a RabbitMQ vhost of its own
(the Celery broker: the smoke's queues and worker broadcasts cannot reach another run's workers), a temporary
DAGSTER_HOME, `dagster-webserver`, `dagster-daemon run` and `dagster-celery worker start` processes.

Each process starts in its own session (its own process group, so whatever it spawns stops with it: code servers,
run workers, Celery pool children) with an explicit environment: DAGSTER_HOME, PYTHONPATH (the repository root, so
that every process imports the same `tests.deploy_defs`), PATH (this interpreter's bin first: `dagster-celery`
runs `celery` from it) and the `FLUJO_DEPLOY_*` settings that code location reads. `deployment()` stops every group
it started, drops the database and deletes the vhost, also on failure or Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from celery import Celery

from flujo_dagster.config import APPROVALS_INTERVAL_ENV, WEBSERVER_URL_ENV
from tests.dagster_dev import _wait_loaded, leftovers
from tests.test_webserver import ROOT, Webserver, _free_port, _stop

BIN = Path(sys.executable).parent
POSTGRES = os.environ.get("FLUJO_DEPLOY_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
"""The server (no database): the smoke creates its own database there and drops it at the end."""
RABBITMQ = "guest:guest@127.0.0.1:5672"
REDIS = os.environ.get("FLUJO_DEPLOY_REDIS", "redis://127.0.0.1:6379/0")
"""The result backend. Celery's keys hold the task id (a uuid4), so runs sharing a Redis database never collide;
each result expires after an hour (`CELERY_SETTINGS` in tests/deploy_defs.py)."""
WORKER_CONCURRENCY = 2
BOOT_TIMEOUT_S = 90.0
DAGSTER_YAML = """telemetry:
  enabled: false
storage:
  postgres:
    postgres_url: {sqlalchemy_url}
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
run_monitoring:
  enabled: true
  poll_interval_seconds: 2
  start_timeout_seconds: 180
  max_resume_run_attempts: 0
  max_runtime_seconds: 900
"""
"""The instance: PostgreSQL storage, queued runs, run monitoring. The default run launcher cannot check a run
worker's health, so monitoring fails a run whose step died with its worker once it exceeds its maximum runtime
(this default, or the run's `dagster/max_runtime` tag); `max_resume_run_attempts: 0` fails instead of resuming."""
WORKSPACE = """load_from:
  - python_module:
      module_name: tests.deploy_defs
      attribute: defs
      working_directory: {root}
"""
CELERY_YAML = """execution:
  config:
    broker: {broker}
    backend: {backend}
    config_source:
      task_track_started: true
      result_expires: 3600
"""


class DeployError(RuntimeError):
    """A service did not start, or a run did not get where the smoke expected in time."""


@dataclass
class Deployment:
    """The running services: where they are, and the process group of each (by name)."""

    home: Path
    shared: Path
    database: str
    postgres_url: str
    broker: str
    server: Webserver
    location: str
    env: dict[str, str]
    groups: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    workers_started: list[str] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start `argv` from the repository root in its own process group, its output in `<home>/<name>.log`."""
        with (self.home / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups[name] = proc
        return proc

    def start_worker(self, name: str) -> None:
        """Start the Celery worker `name` (`dagster-celery worker start`, the code location preloaded) and wait until
        it answers a ping through the broker."""
        argv = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        argv += ["-y", str(self.home / "celery.yaml"), "-n", name, "-q", "dagster", "-i", "tests.deploy_defs"]
        argv += ["--", f"--concurrency={WORKER_CONCURRENCY}", "--without-mingle", "--without-gossip"]
        proc = self.start(name, argv)
        self.workers_started.append(name)
        app = Celery(broker=self.broker)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while not any(key.startswith(f"{name}@") for reply in app.control.ping(timeout=0.5) or [] for key in reply):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DeployError(f"worker {name} did not answer: {self.log(name)}")
        app.close()

    def group_of(self, pid: int) -> str | None:
        """The name of the process group `pid` belongs to, or None."""
        with suppress(ProcessLookupError):
            pgid = os.getpgid(pid)
            return next((name for name, proc in self.groups.items() if proc.pid == pgid), None)
        return None

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group `name` (a worker: its launcher, main process and pool children)."""
        proc = self.groups[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def log(self, name: str, chars: int = 3000) -> str:
        """The end of process group `name`'s output."""
        return (self.home / f"{name}.log").read_text(errors="replace")[-chars:]


def _admin(sql: str) -> None:
    conn = psycopg2.connect(f"{POSTGRES}/postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def _database(name: str) -> Iterator[str]:
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def _vhost(name: str) -> Iterator[str]:
    """A RabbitMQ vhost of this run (`rabbitmqctl`); the default vhost `/` when rabbitmqctl is missing or refused,
    where parallel smokes would share the `dagster` queue."""
    try:
        _rabbitmqctl("add_vhost", name)
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"deploy-smoke: no vhost of its own ({exc}); using the default vhost '/'", file=sys.stderr)
        yield f"pyamqp://{RABBITMQ}//"
        return
    try:
        yield f"pyamqp://{RABBITMQ}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


def _stop_all(deployment: Deployment) -> None:
    for proc in reversed(list(deployment.groups.values())):
        _stop(proc)
    for pid in leftovers(deployment.home):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _env(home: Path, shared: Path, broker: str, url: str) -> dict[str, str]:
    env = {**os.environ}
    env.pop("FLUJO_DAGSTER_LIVE", None)  # the offline model: nothing leaves the machine
    pythonpath = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLUJO_DEPLOY_DIR": str(shared),
            "FLUJO_DEPLOY_BROKER": broker,
            "FLUJO_DEPLOY_BACKEND": REDIS,
            WEBSERVER_URL_ENV: url,
            APPROVALS_INTERVAL_ENV: "1",
        }
    )
    return env


@contextmanager
def deployment(tmp: Path, *, workers: int = 2) -> Iterator[Deployment]:
    """Everything the smoke needs, started in `tmp`: yields once the webserver has loaded the location and every
    worker answers; stops all of it on the way out."""
    tag = uuid.uuid4().hex[:10]
    home, shared = tmp / "dagster_home", tmp / "shared"
    home.mkdir(parents=True)
    shared.mkdir(parents=True)
    with ExitStack() as stack:
        url = stack.enter_context(_database(f"flujo_deploy_{tag}"))
        broker = stack.enter_context(_vhost(f"flujo-deploy-{tag}"))
        # dagster-postgres goes through SQLAlchemy, whose plain postgresql:// means psycopg 3 since 2.1: name the driver
        (home / "dagster.yaml").write_text(
            DAGSTER_YAML.format(sqlalchemy_url=url.replace("postgresql://", "postgresql+psycopg2://", 1))
        )
        (home / "workspace.yaml").write_text(WORKSPACE.format(root=ROOT))
        (home / "celery.yaml").write_text(CELERY_YAML.format(broker=broker, backend=REDIS))
        port = _free_port()
        server = Webserver(url=f"http://127.0.0.1:{port}", log=home / "webserver.log")
        env = _env(home, shared, broker, server.url)
        deploy = Deployment(home, shared, f"flujo_deploy_{tag}", url, broker, server, "", env)
        stack.callback(_stop_all, deploy)
        workspace = str(home / "workspace.yaml")
        web = deploy.start(
            "webserver", [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)]
        )
        deploy.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace])
        for i in range(workers):
            deploy.start_worker(f"w{i + 1}-{tag}")
        deploy.location = _wait_loaded(server, web)
        yield deploy
    shutil.rmtree(tmp / "dagster_home" / "dagster_celery", ignore_errors=True)
