"""Boot `dagster dev` (webserver, daemon, code server) for a test or a benchmark, and drive it through GraphQL.

`dagster dev` starts in its own session and process group from the repository root, with a temporary DAGSTER_HOME
(telemetry off) and the approvals sensor aimed at its webserver (`FLUJO_DAGSTER_WEBSERVER_URL`) at a short
interval (`FLUJO_DAGSTER_APPROVALS_INTERVAL_S`). Leaving the context stops the whole group (webserver, daemon, code
server, run workers) and fails when a process that saw this DAGSTER_HOME outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRun, RunsFilter

from flujo_dagster.config import APPROVALS_INTERVAL_ENV, WEBSERVER_URL_ENV
from tests.test_webserver import LOCATION_QUERY, ROOT, Webserver, _free_port, _stop

DAGSTER = Path(sys.executable).parent / "dagster"
BOOT_TIMEOUT_S = 90.0
PARENT_TAG = "dagster/parent_run_id"

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message }
  }
}
"""
SENSOR = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { minIntervalSeconds sensorState { status ticks(limit: 100) { timestamp status originRunIds } } }
  }
}
"""


class DagsterDevError(RuntimeError):
    """`dagster dev` did not boot, a run did not get where expected in time, or a process outlived the group."""


@dataclass(frozen=True)
class DagsterDev:
    """A running `dagster dev`: its webserver, the instance it serves (same DAGSTER_HOME), the code location."""

    server: Webserver
    instance: DagsterInstance
    home: Path
    location: str
    pgid: int

    def log_tail(self, chars: int = 4000) -> str:
        """The end of `dagster dev`'s combined output (webserver, daemon, code server)."""
        return self.server.log.read_text(errors="replace")[-chars:]

    def launch(
        self,
        job: str,
        run_config: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        *,
        assets: Sequence[Sequence[str]] | None = None,
    ) -> str:
        """Launch `job` as the Launchpad does (GraphQL `launchRun`), materializing only `assets` (asset key paths)
        when given; the run's id (queued for the daemon)."""
        selector: dict[str, Any] = {
            "repositoryLocationName": self.location,
            "repositoryName": "__repository__",
            "jobName": job,
        }
        if assets is not None:
            selector["assetSelection"] = [{"path": list(path)} for path in assets]
        params = {
            "selector": selector,
            "runConfigData": dict(run_config),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        launched = self.server.graphql(LAUNCH, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise DagsterDevError(f"launching {job} failed: {launched}")
        run_id: str = launched["run"]["runId"]
        return run_id

    def sensor(self, name: str) -> dict[str, Any]:
        """The sensor `name` as the UI shows it: `minIntervalSeconds`, `sensorState.status` and its last 100
        `sensorState.ticks` (`timestamp`, `status`, `originRunIds`), newest first."""
        selector = {"repositoryLocationName": self.location, "repositoryName": "__repository__", "sensorName": name}
        found: dict[str, Any] = self.server.graphql(SENSOR, {"selector": selector})["sensorOrError"]
        if found["__typename"] != "Sensor":
            raise DagsterDevError(f"no sensor {name!r}: {found}")
        return found

    def wait_finished(self, run_id: str, timeout_s: float = 60) -> DagsterRun:
        """Run `run_id` once it has finished (success, failure or canceled)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and run.is_finished:
                return run
            time.sleep(0.1)
        run = self.instance.get_run_by_id(run_id)
        raise DagsterDevError(
            f"run {run_id} did not finish within {timeout_s} s ({run.status if run else 'missing'}):\n"
            + self.log_tail()
        )

    def wait_tagged(self, run_id: str, key: str, timeout_s: float = 90) -> DagsterRun:
        """Run `run_id` once it carries tag `key` (the `flujo_costs` sensor ticks every 30 s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and key in run.tags:
                return run
            time.sleep(0.2)
        raise DagsterDevError(f"run {run_id} got no tag {key!r} within {timeout_s} s:\n" + self.log_tail())

    def wait_child(self, parent_run_id: str, timeout_s: float = 60) -> str:
        """The id of the run re-executing `parent_run_id` (tag `dagster/parent_run_id`), once one exists."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = self.instance.get_runs(filters=RunsFilter(tags={PARENT_TAG: parent_run_id}))
            if runs:
                return runs[0].run_id
            time.sleep(0.1)
        raise DagsterDevError(f"nothing re-executed run {parent_run_id} within {timeout_s} s:\n" + self.log_tail())


def _write_home(home: Path, instance_yaml: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n" + instance_yaml)


def _location(server: Webserver) -> str | None:
    """The first code location's name once every location has loaded; None while loading. A load error raises."""
    workspace = server.graphql(LOCATION_QUERY)["workspaceOrError"]
    entries = workspace.get("locationEntries") or []
    if not entries or any(entry["loadStatus"] != "LOADED" for entry in entries):
        return None
    for entry in entries:
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") != "RepositoryLocation":
            raise DagsterDevError(f"the code location {entry['name']!r} failed to load: {loaded}")
    name: str = entries[0]["name"]
    return name


def _wait_loaded(server: Webserver, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise DagsterDevError(f"dagster dev exited with {proc.returncode}:\n{server.log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise DagsterDevError(f"no code location within {BOOT_TIMEOUT_S} s:\n{server.log.read_text()[-4000:]}")
        try:
            name = _location(server)
        except OSError:  # the webserver is not listening yet (URLError is an OSError)
            name = None
        if name is not None:
            return name
        time.sleep(0.25)


def leftovers(home: Path) -> list[int]:
    """The ids of live processes whose environment names `home` as DAGSTER_HOME (what `dagster dev` started)."""
    marker = f"DAGSTER_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or another user's process
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """The ids of live processes in process group `pgid` (`pgrep -g`)."""
    listed = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True, check=False)
    return [int(pid) for pid in listed.stdout.split()]


@contextmanager
def dagster_dev(
    home: Path,
    *,
    target: Sequence[str] = ("-w", "workspace.yaml"),
    interval_s: int = 1,
    instance_yaml: str = "",
    env: Mapping[str, str] | None = None,
) -> Iterator[DagsterDev]:
    """Run `dagster dev <target>` from the repository root on a free port with DAGSTER_HOME `home` (written here:
    telemetry off, plus `instance_yaml`), the approvals sensor aimed at it every `interval_s` seconds; yields once
    the code location has loaded. Stops every process it started, even on failure."""
    _write_home(home, instance_yaml)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = Webserver(url=url, log=home / "dagster_dev.log")
    child_env = {**os.environ, **(env or {})}
    child_env.pop("FLUJO_DAGSTER_LIVE", None)  # the offline model: nothing leaves the machine
    child_env.update({"DAGSTER_HOME": str(home), WEBSERVER_URL_ENV: url, APPROVALS_INTERVAL_ENV: str(interval_s)})
    with server.log.open("wb") as out:
        proc = subprocess.Popen(
            [str(DAGSTER), "dev", *target, "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: webserver, daemon, code server and run workers stop with it
        )
        try:
            location = _wait_loaded(server, proc)
            with DagsterInstance.from_config(str(home)) as instance:
                yield DagsterDev(server=server, instance=instance, home=home, location=location, pgid=proc.pid)
        finally:
            _stop(proc)
            stray = leftovers(home)
            for pid in stray:
                with suppress(ProcessLookupError):  # it ended meanwhile
                    os.kill(pid, signal.SIGKILL)
    if stray:
        raise DagsterDevError(f"processes outlived dagster dev's process group and were killed: {stray}")
