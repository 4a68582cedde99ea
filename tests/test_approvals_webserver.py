"""The `flujo_approvals` sensor resumes a parked run through a real `dagster-webserver` (GraphQL
`launchRunReexecution`): the run is launched through GraphQL, parks at its gate, a decision is recorded, one tick
of the sensor resumes it, and the resumed run succeeds without running an upstream step or a model request again.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context, instance_for_test

from flujo_dagster import load_final_context
from flujo_dagster.adapter.control.approvals import decide, pending
from flujo_dagster.adapter.control.sensors import approvals_sensor
from tests.approval_defs import REQUEST_LOG, Brief, Post, briefed, defs, gated
from tests.test_webserver import BOOT_TIMEOUT_S, ROOT, WEBSERVER, Webserver, _free_port, _server_info, _stop

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Webserver, DagsterInstance, Path]]:
    home = tmp_path / "home"
    home.mkdir()
    # runs launched through GraphQL start at once (the default queue needs the daemon, which `dagster dev` runs)
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    requests = tmp_path / "requests.log"
    requests.touch()
    log = tmp_path / "webserver.log"
    env = {**os.environ, "DAGSTER_HOME": str(home), REQUEST_LOG: str(requests)}
    port = _free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(WEBSERVER), "-m", "tests.approval_defs", "-a", "defs", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            while _server_info(url) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dagster-webserver did not start:\n{log.read_text()}")
                time.sleep(0.25)
            with instance_for_test(temp_dir=str(home)) as instance:
                yield Webserver(url=url, log=log), instance, requests
        finally:
            _stop(proc)


def wait_done(instance: DagsterInstance, run_id: str, timeout_s: float = 120) -> DagsterRunStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run.status
        time.sleep(0.2)
    run = instance.get_run_by_id(run_id)
    pytest.fail(f"run {run_id} did not finish within {timeout_s} s: {run.status if run else 'missing'}")


def test_the_sensor_resumes_a_decided_run_through_the_webserver(
    served: tuple[Webserver, DagsterInstance, Path],
) -> None:
    server, instance, requests = served
    (location,) = server.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    params = {
        "selector": {
            "repositoryLocationName": location["name"],
            "repositoryName": "__repository__",
            "jobName": "gated",
        },
        "runConfigData": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}},
        "executionMetadata": {"tags": [{"key": "dagster/user", "value": "requester"}]},
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    parked = launched["run"]["runId"]
    assert wait_done(instance, parked) == DagsterRunStatus.SUCCESS  # a park is not a failure
    assert [p.gate for p in pending(instance=instance)] == ["review"]

    assert defs.resolve_sensor_def("flujo_approvals").minimum_interval_seconds == 30  # the location's own
    sensor = approvals_sensor(
        server.url, interval=timedelta(seconds=5)
    )  # the same sensor, aimed at this test's webserver
    idle = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    assert idle.skip_message == "nothing to resume"  # no decision yet
    decide(parked, verdict="approve", by="ana", instance=instance)
    started = time.monotonic()
    tick = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    (resumed,) = [r for r in instance.get_runs() if r.parent_run_id == parked]
    # the daemon records a tick with run reactions as SUCCESS, naming the run (a skip message would read "skipped")
    assert [r.dagster_run.run_id for r in tick.dagster_run_reactions or []] == [resumed.run_id]
    assert tick.skip_message is None
    assert wait_done(instance, resumed.run_id) == DagsterRunStatus.SUCCESS, server.log.read_text()[-3000:]
    print(f"decision to resumed run finished: {time.monotonic() - started:.2f} s")
    assert "flujo/decision/review/ana" in resumed.tags and resumed.tags["dagster/parent_run_id"] == parked
    assert (resumed.tags["flujo/awaiting/review"], resumed.tags["flujo/parked"]) == ("resumed", "false")
    # the UI shows "Launched by: flujo_approvals" (the dagster/sensor_name tag) and the flujo tags say why
    assert resumed.tags["dagster/sensor_name"] == "flujo_approvals"
    assert resumed.tags["flujo/resumed_by"] == "sensor flujo_approvals"
    assert resumed.tags["flujo/resumed_because"] == "review: approve by ana"
    assert resumed.tags["dagster/root_run_id"] == parked and resumed.tags["dagster/user"] == "requester"
    assert instance.get_run_by_id(parked).tags["flujo/parked"] == "false"  # type: ignore[union-attr]  # resolved
    assert requests.read_text().splitlines() == ["Write about otters"]  # the model was not asked again
    context = load_final_context(gated, resumed.run_id, instance=instance)
    assert context == Post(topic="otters", draft="draft about otters", published="published: draft about otters")
    # a second tick resumes nothing: the resume key of these decisions exists
    again = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    assert again.skip_message == "nothing to resume"
    assert len([r for r in instance.get_runs() if r.parent_run_id == parked]) == 1


SEEN = """
query Seen($runId: ID!, $outline: AssetKeyInput!, $published: AssetKeyInput!) {
  runOrError(runId: $runId) { ... on Run { status assetMaterializations { assetKey { path } } } }
  outline: assetOrError(assetKey: $outline) { ... on Asset { latestFailedToMaterializeTimestamp } }
  published: assetOrError(assetKey: $published) { ... on Asset { latestFailedToMaterializeTimestamp } }
  outlineCheck: assetCheckExecutions(assetKey: $outline, checkName: "flujo_type", limit: 1) { runId status }
  publishedCheck: assetCheckExecutions(assetKey: $published, checkName: "flujo_type", limit: 1) { runId status }
  contextCheck: assetCheckExecutions(assetKey: $published, checkName: "flujo_final_context", limit: 1) {
    runId status
  }
}
"""


def test_a_parked_run_looks_parked_not_failed_through_graphql(
    served: tuple[Webserver, DagsterInstance, Path],
) -> None:
    """Seen through the webserver's GraphQL API, as the UI reads it: the parked run is SUCCESS, the asset before
    the gate is materialized with its check passed, the assets after it did not fail to materialize and their
    checks are skipped, not failed; the sensor resumes it with the UI's "re-execute selected"."""
    server, instance, requests = served
    (location,) = server.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    selector = {"repositoryLocationName": location["name"], "repositoryName": "__repository__", "jobName": "briefed"}
    inputs = {"ops": {"briefed_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}}}
    launched = server.graphql(LAUNCH, {"params": {"selector": selector, "runConfigData": inputs}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    parked = launched["run"]["runId"]
    assert wait_done(instance, parked) == DagsterRunStatus.SUCCESS, server.log.read_text()[-3000:]
    keys = {name: {"path": ["briefed", name]} for name in ("outline", "published")}
    variables = {"runId": parked, "outline": keys["outline"], "published": keys["published"]}
    seen = server.graphql(SEEN, variables)
    assert seen["runOrError"] == {
        "status": "SUCCESS",
        "assetMaterializations": [{"assetKey": {"path": ["briefed", "outline"]}}],
    }
    assert seen["outlineCheck"] == [{"runId": parked, "status": "SUCCEEDED"}]
    assert seen["published"] == {"latestFailedToMaterializeTimestamp": None}, seen
    for name in ("published", "context"):  # the final context's check is on the last asset, `published`
        assert seen[f"{name}Check"] == [{"runId": parked, "status": "SKIPPED"}], (name, seen)
    assert seen["outline"] == {"latestFailedToMaterializeTimestamp": None}

    decide(parked, verdict="approve", by="ana", instance=instance)
    sensor = approvals_sensor(server.url, interval=timedelta(seconds=5))
    sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    (resumed,) = [r for r in instance.get_runs() if r.parent_run_id == parked]
    assert wait_done(instance, resumed.run_id) == DagsterRunStatus.SUCCESS, server.log.read_text()[-3000:]
    assert sorted(resumed.step_keys_to_execute or []) == [
        "briefed_graph.flujo_context",
        "briefed_graph.flujo_context_check",
        "briefed_graph.publish",
        "briefed_graph.review",
    ]
    assert requests.read_text().splitlines() == ["Write about otters"]  # the model was not asked again
    context = load_final_context(briefed, resumed.run_id, instance=instance)
    assert context == Brief(
        topic="otters",
        outline="outline of otters",
        draft="draft about otters",
        published="published: draft about otters",
    )
    after = server.graphql(SEEN, {**variables, "runId": resumed.run_id})
    assert [m["assetKey"]["path"][1] for m in after["runOrError"]["assetMaterializations"]] == ["published"]
    assert after["publishedCheck"] == [{"runId": resumed.run_id, "status": "SUCCEEDED"}]
    assert after["contextCheck"] == [{"runId": resumed.run_id, "status": "SUCCEEDED"}]
