"""`make deploy-smoke`: flujo_dagster on a production-shaped Dagster deployment, end to end on 127.0.0.1.

tests/deploy_services.py starts a webserver, a daemon and two Celery workers (dagster-celery) on an instance kept in
a fresh PostgreSQL database, with RabbitMQ (a vhost of this run) as broker and Redis as result backend; the code
location is tests/deploy_defs.py, every job on `celery_executor`, the IO manager on a directory every worker
shares. Runs are launched through the webserver's GraphQL API (as the Launchpad does) and dequeued by the daemon.

Scenarios, each checked against the correct final context:

1. `digest` and 2. `reviewed_digest`: the same final context as the example run in process on the offline model;
3. `gated_digest`: parks at its gate, approved with `decide`, resumed by the `flujo_approvals` sensor in the daemon
   exactly once (one child run, tagged by the sensor, and still one a few ticks later);
4. `fan32`: a `Map` with one op per element (`inline=False`) over 32 items under a run budget of exactly 32 worst
   cases: 32 reconciled reservations in the instance's PostgreSQL ledger, nothing left reserved, overspend $0;
5. `kill_probe`: its middle request blocks; the smoke SIGKILLs the whole Celery worker running it (launcher, main
   process and pool children: a lost machine), starts a replacement, and waits for run monitoring to mark the run
   FAILED (the run carries `dagster/max_runtime`; nothing calls `report_run_failed`). It then re-executes the run
   from failure through GraphQL: it must succeed without starting a step the first run completed, without
   repeating a completed model request (the shared request log), and with the killed step's open reservation
   recovered by the re-execution (overspend $0).

Also checked: the ledger's and the call cache's tables are in the instance's own database. Prints a table of the
scenarios, then one JSON line; exits 1 when any expectation fails.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from pydantic import BaseModel

from definitions.digest import digest
from definitions.gated import gated
from definitions.offline import offline_runtime
from definitions.review import review
from flujo_dagster import Pipeline, load_final_context, run_pipeline
from flujo_dagster.adapter.control.approvals import decide
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.pricing import USD_NANOS
from tests import deploy_defs
from tests.dagster_dev import LAUNCH, PARENT_TAG
from tests.deploy_services import DeployError, Deployment, deployment

RUN_TIMEOUT_S = 180.0
KILL_MAX_RUNTIME_S = 40
"""The kill probe's `dagster/max_runtime`: run monitoring fails it this long after it started, whatever killed it."""
REEXECUTION_MAX_RUNTIME_S = 600
SENSOR_TICKS_S = 4.0
REEXECUTE = """
mutation Reexecute($params: ReexecutionParams!) {
  launchPipelineReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""


def graph_inputs(graph: str | None, inputs: Mapping[str, object]) -> dict[str, Any]:
    """The run config giving `inputs` to `flujo_inputs` (inside `graph` for an asset job)."""
    config = {"flujo_inputs": {"config": {"inputs": dict(inputs)}}}
    return {"ops": {graph: {"ops": config}} if graph else config}


@dataclass
class Row:
    """One scenario's outcome."""

    name: str
    run_ids: list[str] = field(default_factory=list)
    status: str = "pending"
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        """Record `problem` unless `ok`."""
        if not ok:
            self.problems.append(problem)


@dataclass
class Smoke:
    """The deployment and the instance it serves, as the smoke drives them."""

    deploy: Deployment
    instance: DagsterInstance
    rows: list[Row] = field(default_factory=list)
    overspend: Decimal = Decimal(0)

    @property
    def io(self) -> PydanticJsonIOManager:
        """The IO manager the workers use: on the shared directory."""
        return PydanticJsonIOManager(base_dir=str(self.deploy.shared / "io"))

    def launch(self, job: str, run_config: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> str:
        """Launch `job` through GraphQL `launchRun`; the run's id (queued for the daemon)."""
        selector = {"repositoryLocationName": self.deploy.location, "repositoryName": "__repository__", "jobName": job}
        params = {
            "selector": selector,
            "runConfigData": dict(run_config),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        launched = self.deploy.server.graphql(LAUNCH, {"params": params})["launchRun"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise DeployError(f"launching {job} failed: {launched}")
        run_id: str = launched["run"]["runId"]
        return run_id

    def reexecute_from_failure(self, run_id: str) -> str:
        """Re-execute `run_id` from failure through GraphQL, as the UI's "Re-execute from failure" does."""
        # the parent's tags are kept but its short max runtime, there to detect the lost worker: the global one applies
        tags = [{"key": "dagster/max_runtime", "value": str(REEXECUTION_MAX_RUNTIME_S)}]
        params = {"parentRunId": run_id, "strategy": "FROM_FAILURE", "extraTags": tags}
        launched = self.deploy.server.graphql(REEXECUTE, {"params": params})["launchPipelineReexecution"]
        if launched["__typename"] != "LaunchRunSuccess":
            raise DeployError(f"re-executing {run_id} failed: {launched}")
        child: str = launched["run"]["runId"]
        return child

    def wait(self, run_id: str, done: Callable[[DagsterRun], bool] | None = None) -> DagsterRun:
        """Run `run_id` once finished (or once `done` holds for it)."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and (done(run) if done else run.is_finished):
                return run
            time.sleep(0.25)
        raise DeployError(f"run {run_id} did not get there within {RUN_TIMEOUT_S} s: {self.deploy.log('daemon')}")

    def children(self, run_id: str) -> list[DagsterRun]:
        """The runs naming `run_id` as their parent."""
        return list(self.instance.get_runs(filters=RunsFilter(tags={PARENT_TAG: run_id})))

    def step_starts(self, run_id: str) -> list[str]:
        """The step keys that started in run `run_id`, from its event log."""
        events = self.instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
        return sorted(e.step_key for e in events if e.step_key is not None)

    def requests(self) -> list[str]:
        """The first line of every completed model request's prompt, from the shared log."""
        log = self.deploy.shared / deploy_defs.REQUESTS
        return [line.split("\t", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def expected(pipeline: Pipeline[Any], inputs: Mapping[str, object]) -> BaseModel:
    """The final context of `pipeline` run in process on the offline model (what every executor must produce)."""
    with DagsterInstance.ephemeral() as instance:
        result = run_pipeline(
            pipeline, inputs, instance=instance, resources={"agent_runtime": offline_runtime()}, log_level="CRITICAL"
        )
        return result.context


def examples(smoke: Smoke) -> None:
    """Scenarios 1-4, launched together."""
    started = time.monotonic()
    plain = [
        (Row("digest"), digest, "digest", {"topic": "agents"}),
        (Row("reviewed_digest"), review, "reviewed_digest", {"topic": "agents"}),
    ]
    launched = [(row, p, smoke.launch(job, graph_inputs(f"{job}_graph", i)), i) for row, p, job, i in plain]
    gate_row = Row("gated_digest (parked, approved, resumed)")
    parked = smoke.launch("gated_digest", graph_inputs("gated_digest_graph", {"topic": "agents"}))
    fan_row = Row("fan32 (Map inline=False, 32 items, budget)")
    fan_run = smoke.launch("fan32", graph_inputs(None, {}))
    gated_approved(smoke, gate_row, parked, started)
    for row, pipeline, run_id, inputs in launched:
        finished(smoke, row, run_id, started)
        if row.status == "SUCCESS":
            context = load_final_context(pipeline, run_id, instance=smoke.instance, io_manager=smoke.io)
            row.check(context == expected(pipeline, inputs), f"final context differs from in process: {context}")
    fan_budget(smoke, fan_row, fan_run, started)


def finished(smoke: Smoke, row: Row, run_id: str, started: float) -> DagsterRun:
    """Record run `run_id` in `row` once it finished."""
    run = smoke.wait(run_id)
    row.run_ids.append(run_id)
    row.status, row.seconds = run.status.value, time.monotonic() - started
    row.check(run.status == DagsterRunStatus.SUCCESS, f"run {run_id} ended {run.status.value}")
    smoke.rows.append(row)
    return run


def gated_approved(smoke: Smoke, row: Row, parked: str, started: float) -> None:
    """Scenario 3: the parked run is approved; the sensor resumes it exactly once."""
    run = smoke.wait(parked)
    row.run_ids.append(parked)
    row.check(run.tags.get("flujo/parked") == "true", f"run {parked} did not park: {run.status.value} {run.tags}")
    decide(parked, verdict="approve", by="deploy-smoke", instance=smoke.instance)
    smoke.wait(parked, lambda _: bool(smoke.children(parked)))
    (child,) = smoke.children(parked)
    finished(smoke, row, child.run_id, started)
    row.run_ids.insert(0, row.run_ids.pop())  # the parked run first
    time.sleep(SENSOR_TICKS_S)  # a few more sensor ticks: a second resume would show now
    resumed = smoke.children(parked)
    row.check(len(resumed) == 1, f"{len(resumed)} runs resumed {parked}")
    row.check(child.tags.get("flujo/resumed_by") == "sensor flujo_approvals", f"resumed by {child.tags}")
    if row.status == "SUCCESS":
        context = load_final_context(gated, child.run_id, instance=smoke.instance, io_manager=smoke.io)
        done = context.report is not None and context.critique is not None and context.critique.verdict == "publish"
        row.check(done, f"the resumed run's final context is not the published report: {context}")


def fan_budget(smoke: Smoke, row: Row, run_id: str, started: float) -> Decimal:
    """Scenario 4: every element answered, 32 reservations reconciled, nothing reserved, overspend $0."""
    finished(smoke, row, run_id, started)
    if row.status == "SUCCESS":
        context = load_final_context(deploy_defs.fan, run_id, instance=smoke.instance, io_manager=smoke.io)
        want = [f"answer to item {i}" for i in range(deploy_defs.ITEMS)]
        row.check(context.answers == want, f"answers {context.answers}")
    ledger = InstanceLedger().for_instance(smoke.instance)
    entries = ledger.entries(run_id=run_id)
    totals = ledger.totals(f"run:{run_id}")
    row.check(sorted(e.state for e in entries) == ["reconciled"] * deploy_defs.ITEMS, f"ledger entries {entries}")
    row.check((totals.reserved_usd_nanos, totals.overshoots) == (0, 0), f"totals {totals}")
    overspend = max(Decimal(0), Decimal(totals.spent_usd_nanos) / USD_NANOS - deploy_defs.MAP_BUDGET_USD)
    row.check(overspend == 0, f"overspend ${overspend}")
    smoke.overspend = max(smoke.overspend, overspend)
    return overspend


def wait_blocked(smoke: Smoke, run_id: str) -> int:
    """The id of the process whose model request blocks in run `run_id`, once it wrote it."""
    marker = smoke.deploy.shared / deploy_defs.BLOCKED_PID
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not marker.exists() or not marker.read_text().strip():
        run = smoke.instance.get_run_by_id(run_id)
        if time.monotonic() > deadline or (run is not None and run.is_finished):
            raise DeployError(f"run {run_id} never blocked: {run.status if run else None}")
        time.sleep(0.1)
    return int(marker.read_text())


def worker_kill(smoke: Smoke) -> bool:
    """Scenario 5; whether the run was failed by monitoring and its re-execution from failure recovered it."""
    started = time.monotonic()
    row = Row("kill_probe (worker SIGKILL, monitoring, from failure)")
    smoke.rows.append(row)
    tags = {"dagster/max_runtime": str(KILL_MAX_RUNTIME_S)}
    parent = smoke.launch("kill_probe", graph_inputs(None, {"topic": "celery"}), tags)
    row.run_ids.append(parent)
    pid = wait_blocked(smoke, parent)
    worker = smoke.deploy.group_of(pid)
    if worker is None or not worker.startswith("w"):
        raise DeployError(f"the blocked request's process {pid} is in no worker the smoke started")
    smoke.deploy.kill(worker)
    killed_at = time.monotonic()
    smoke.deploy.start_worker(f"w{len(smoke.deploy.workers_started) + 1}-replacement")
    failed = smoke.wait(parent)
    detected = time.monotonic() - killed_at
    print(
        f"worker {worker} killed {killed_at - started:.1f} s into the run; "
        f"run {failed.status.value} {detected:.1f} s later"
    )
    failures = smoke.instance.all_logs(parent, of_type=DagsterEventType.RUN_FAILURE)
    by_monitoring = any("maximum runtime" in (e.message or "") or "forcibly" in (e.message or "") for e in failures)
    row.check(failed.status == DagsterRunStatus.FAILURE, f"the killed run ended {failed.status.value}")
    row.check(by_monitoring, f"not failed by run monitoring: {[e.message for e in failures]}")
    (smoke.deploy.shared / deploy_defs.RELEASE).write_text("released")
    child = smoke.reexecute_from_failure(parent)
    run = finished(smoke, Row("unused"), child, started)
    smoke.rows.pop()
    row.run_ids.append(child)
    row.status, row.seconds = run.status.value, time.monotonic() - started
    if run.status != DagsterRunStatus.SUCCESS:
        failures = smoke.instance.all_logs(child, of_type=DagsterEventType.STEP_FAILURE)
        failures += smoke.instance.all_logs(child, of_type=DagsterEventType.RUN_FAILURE)
        row.problems += [f"re-execution {child}: {e.step_key}: {e.message} {e.dagster_event}"[:2000] for e in failures]
    recovered = run.status == DagsterRunStatus.SUCCESS and reexecution_checks(smoke, row, parent, child)
    return recovered and not row.problems


def reexecution_checks(smoke: Smoke, row: Row, parent: str, child: str) -> bool:
    """No completed step started again, no completed request made again, the final context right, the killed
    step's reservation recovered and nothing overspent."""
    done = {e.step_key for e in smoke.instance.all_logs(parent, of_type=DagsterEventType.STEP_SUCCESS) if e.step_key}
    again = done & set(smoke.step_starts(child))
    row.check(bool(done) and not again, f"steps the first run completed started again: {sorted(again)}")
    probes = [line for line in smoke.requests() if line.startswith("probe ")]
    kinds = sorted(line.split()[1] for line in probes)
    row.check(kinds == ["first", "last", "middle"], f"completed probe requests: {probes}")
    context = load_final_context(deploy_defs.probe, child, instance=smoke.instance, io_manager=smoke.io)
    first = "answer to probe first celery"
    middle = f"answer to probe middle {first} {deploy_defs.BLOCK}"
    row.check(
        (context.first, context.middle, context.last) == (first, middle, f"answer to probe last {middle}"), str(context)
    )
    ledger = InstanceLedger().for_instance(smoke.instance)
    states = sorted(e.state for e in ledger.entries(run_id=parent))
    row.check(states == ["reconciled", "recovered"], f"the killed run's ledger entries: {states}")
    totals = ledger.totals(f"run:{parent}")
    overspend = max(Decimal(0), Decimal(totals.spent_usd_nanos) / USD_NANOS - deploy_defs.PROBE_BUDGET_USD)
    row.check(totals.reserved_usd_nanos == 0 and overspend == 0, f"totals {totals}")
    smoke.overspend = max(smoke.overspend, overspend)
    return not again and bool(done)


def tables_in_instance_database(smoke: Smoke) -> list[str]:
    """Problems unless the ledger's and the call cache's tables are in the instance's own database."""
    conn = psycopg2.connect(smoke.deploy.postgres_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'flujo%'")
            tables = sorted(name for (name,) in cur.fetchall())
    finally:
        conn.close()
    problems = []
    for prefix in ("flujo_budget_", "flujo_call_cache"):
        if not any(t.startswith(prefix) for t in tables):
            problems.append(f"no {prefix}* table in {smoke.deploy.database} (found {tables})")
    return problems


def report(smoke: Smoke, kill_ok: bool, resumed_once: bool, seconds: float, problems: list[str]) -> dict[str, Any]:
    """Print the table and the problems; the JSON line's fields."""
    print(f"{'scenario':<54} {'status':<8} {'seconds':>8}  run ids")
    for row in smoke.rows:
        print(f"{row.name:<54} {row.status:<8} {row.seconds:>8.1f}  {' '.join(row.run_ids)}")
    for row in smoke.rows:
        problems += [f"{row.name}: {p}" for p in row.problems]
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    ok = sum(1 for row in smoke.rows if row.status == "SUCCESS" and not row.problems)
    return {
        "bench": "deploy",
        "executor": "celery",
        "workers": len(smoke.deploy.workers_started) - 1 if kill_ok else 2,
        "runs_ok": ok,
        "runs_expected": 5,
        "overspend_usd": float(smoke.overspend),
        "resumed_once": resumed_once,
        "worker_kill_recovered": kill_ok,
        "seconds": round(seconds, 1),
    }


def main() -> int:
    """Run the smoke; 0 when every expectation held."""
    started = time.monotonic()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flujo_deploy_") as tmp, deployment(Path(tmp)) as deploy:
        print(f"deployment up in {time.monotonic() - started:.1f} s: {deploy.server.url}, database {deploy.database}")
        with DagsterInstance.from_config(str(deploy.home)) as instance:
            smoke = Smoke(deploy, instance)
            try:
                examples(smoke)
                kill_ok = worker_kill(smoke)
            except DeployError as exc:
                problems.append(str(exc))
                kill_ok = False
            problems += tables_in_instance_database(smoke)
            gate = next((r for r in smoke.rows if r.name.startswith("gated")), None)
            resumed_once = gate is not None and not any("resumed" in p for p in gate.problems)
            line = report(smoke, kill_ok, resumed_once, time.monotonic() - started, problems)
    line["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line))
    good = line["runs_ok"] == line["runs_expected"] and line["overspend_usd"] == 0 and not problems
    return 0 if good and line["resumed_once"] and line["worker_kill_recovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
