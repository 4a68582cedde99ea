"""The `flujo_approvals` sensor's channel to the webserver, and runs parked outside a code location.

- A wrong webserver URL (a server that answers 404, an HTML page, or a fake `LaunchRunSuccess` for a run that does
  not exist) never marks a run resumed; the tick fails saying so, and no credential of the URL shows anywhere.
- Behind an auth proxy (a reverse proxy this test starts on 127.0.0.1, forwarding to a real `dagster-webserver`,
  refusing requests without its header) the sensor fails clearly without the header and resumes with it.
- A run parked by `flujo-dagster run` (in process, no code location): the sensor reports it once with the command
  that resumes it and does not fail; `flujo-dagster resume RUN_ID TARGET` resumes it to the right final context
  without running an upstream step or a model request again.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, build_sensor_context

from flujo_dagster import load_final_context
from flujo_dagster.adapter.control.approvals import decide, pending
from flujo_dagster.adapter.control.audit import audit_trail
from flujo_dagster.adapter.control.sensors import approvals_sensor
from flujo_dagster.config import WEBSERVER_HEADERS_ENV, WEBSERVER_TOKEN_ENV
from flujo_dagster.errors import ApprovalError
from tests.approval_defs import REQUEST_LOG, Post, defs, gated
from tests.test_approvals_webserver import LAUNCH, LOCATIONS, served, wait_done
from tests.test_cli import run as run_cli
from tests.test_webserver import Webserver

__all__ = ["served"]  # the real webserver fixture, shared

SECRET = "hunter2-Zq9"  # the password in the URL, or the proxy's token: it must show nowhere
Respond = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, str, bytes]]


@contextmanager
def http_server(respond: Respond) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 answering every POST and GET with `respond(handler, body)`; its URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, kind, payload = respond(self, body)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def not_found(handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
    return 404, "text/html", b"<html><body>404 Not Found</body></html>"


def html_page(handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
    return 200, "text/html", b"<html><body>Welcome to nginx!</body></html>"


def fake_success(handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
    """Answers any mutation as Dagster's webserver would if it had launched a run: with a run that does not exist."""
    answer = {"data": {"launchRunReexecution": {"__typename": "LaunchRunSuccess", "run": {"runId": "f" * 36}}}}
    return 200, "application/json", json.dumps(answer).encode()


def auth_proxy(upstream: str, header: str, value: str) -> Respond:
    """A reverse proxy to `upstream` that answers 401 to a request without `header: value`."""
    host, port = upstream.removeprefix("http://").split(":")

    def respond(handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str, bytes]:
        if handler.headers.get(header) != value:
            return 401, "text/plain", b"authentication required"
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            forwarded = {"Content-Type": handler.headers.get("Content-Type") or "application/json"}
            connection.request(handler.command, handler.path, body=body or None, headers=forwarded)
            answer = connection.getresponse()
            return answer.status, answer.getheader("Content-Type") or "application/json", answer.read()
        finally:
            connection.close()

    return respond


def park_in_location(server: Webserver, instance: DagsterInstance) -> str:
    """Launch `gated` through the webserver's GraphQL (a run of the code location) and wait until it parks."""
    (location,) = server.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    params = {
        "selector": {
            "repositoryLocationName": location["name"],
            "repositoryName": "__repository__",
            "jobName": "gated",
        },
        "runConfigData": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}},
    }
    launched = server.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    parked: str = launched["run"]["runId"]
    wait_done(instance, parked)
    assert [p.run_id for p in pending(instance=instance)] == [parked]
    return parked


def children(instance: DagsterInstance, run_id: str) -> list[str]:
    return [r.run_id for r in instance.get_runs() if r.parent_run_id == run_id]


def test_a_wrong_webserver_url_never_marks_a_run_resumed_and_shows_no_credential(
    served: tuple[Webserver, DagsterInstance, Path], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    server, instance, _ = served
    parked = park_in_location(server, instance)
    decide(parked, verdict="approve", by="ana", instance=instance)
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    expected = {
        not_found: "answered HTTP 404 to the request to resume run",
        html_page: "is not GraphQL",
        fake_success: "holds no such re-execution of it, so run",
    }
    for respond, says in expected.items():
        with http_server(respond) as url:
            secret_url = url.replace("http://", f"http://flujo:{SECRET}@")
            sensor = approvals_sensor(secret_url, interval=timedelta(seconds=5))
            with pytest.raises(ApprovalError) as raised:
                sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
            message = str(raised.value)
            assert says in message and parked in message, message
            assert f"http://***@127.0.0.1:{url.rsplit(':', 1)[1]}" in message  # the URL shows, without credentials
            shown += [message, sensor.description or ""]
        assert children(instance, parked) == []  # nothing was launched, and nothing says so
        assert [p.run_id for p in pending(instance=instance)] == [parked]  # still parked: the next tick retries
        assert instance.get_run_by_id(parked).tags["flujo/awaiting/review"] == "pending"  # type: ignore[union-attr]
    assert "resume" not in [e.kind for e in audit_trail(parked, instance=instance)]
    tick_log = capfd.readouterr().err  # the sensor's log (context.log): the tick's log in the UI
    shown += [caplog.text, tick_log, *(f"{e.message} {e.record}" for e in audit_trail(parked, instance=instance))]
    shown += [f"{k}={v}" for k, v in instance.get_run_by_id(parked).tags.items()]  # type: ignore[union-attr]
    leaks = [text for text in shown if SECRET in text or "flujo:" in text]
    assert leaks == []
    assert "answered HTTP 404" in tick_log and "is not GraphQL" in tick_log  # the tick's log says it too


def test_the_sensor_resumes_through_an_auth_proxy_with_its_header_and_fails_clearly_without(
    served: tuple[Webserver, DagsterInstance, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, instance, requests = served
    parked = park_in_location(server, instance)
    decide(parked, verdict="approve", by="ana", instance=instance)
    with http_server(auth_proxy(server.url, "X-Proxy-Token", SECRET)) as proxy:
        sensor = approvals_sensor(proxy, interval=timedelta(seconds=5))
        with pytest.raises(ApprovalError) as refused:
            sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        assert str(refused.value) == (
            f"resumed 0 run(s) (none); 1 could not be resumed: the Dagster webserver at {proxy} answered HTTP 401 to "
            f"the request to resume run {parked}; it needs credentials: set {WEBSERVER_TOKEN_ENV} or "
            f"{WEBSERVER_HEADERS_ENV}"
        )
        assert children(instance, parked) == []
        monkeypatch.setenv(WEBSERVER_HEADERS_ENV, json.dumps({"X-Proxy-Token": SECRET}))  # read at every tick
        tick = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    (resumed,) = children(instance, parked)
    assert [r.dagster_run.run_id for r in tick.dagster_run_reactions or []] == [resumed]
    assert wait_done(instance, resumed) == DagsterRunStatus.SUCCESS, server.log.read_text()[-3000:]
    context = load_final_context(gated, resumed, instance=instance)
    assert context.published == "published: draft about otters"
    assert requests.read_text().splitlines() == ["Write about otters"]  # the model was not asked again
    assert SECRET not in (sensor.description or "") and SECRET not in json.dumps(
        [e.record for e in audit_trail(parked, instance=instance)]
    )


def started(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START) if e.step_key]


def test_a_run_parked_by_the_cli_is_reported_once_and_resumed_by_flujo_dagster_resume(
    dagster_home: Path, instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = tmp_path / "requests.log"
    requests.touch()
    monkeypatch.setenv(REQUEST_LOG, str(requests))
    target = "tests.approval_defs:gated"
    ran = run_cli("run", target, "--input", "topic=otters", home=dagster_home)
    (parked,) = [p.run_id for p in pending(instance=instance)]
    assert f"run id: {parked}" in ran.stdout
    early = run_cli("resume", parked, target, home=dagster_home)
    assert (early.returncode, early.stderr) == (
        2,
        f"run {parked} has no decision for the gates it is parked at (review) yet; decide first "
        "(flujo-dagster pending lists what each waits for)\n",
    )
    approved = run_cli("approve", parked, "--by", "ana", home=dagster_home)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.endswith(
        f"it was parked outside a code location, so no sensor resumes it: once decided, run "
        f"`flujo-dagster resume {parked} MODULE:ATTR` (MODULE:ATTR: the pipeline it ran)\n"
    )

    # the sensor of the location that has this job cannot re-execute it: it says so once, and its ticks succeed
    sensor = approvals_sensor("http://127.0.0.1:9", interval=timedelta(seconds=5), jobs=["gated"])
    for _ in range(3):
        tick = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
        assert tick.skip_message == "nothing to resume"
    (report,) = [e for e in audit_trail(parked, instance=instance) if e.kind == "resume_needed"]
    assert report.message == (
        "decided, but the flujo_approvals sensor cannot resume it: it was parked outside a code location "
        "(flujo-dagster run or execute_job), which the webserver cannot re-execute; run "
        f"`flujo-dagster resume {parked} MODULE:ATTR`"
    )

    wrong = run_cli("resume", parked, "tests.approval_defs:looped", home=dagster_home)
    assert (wrong.returncode, wrong.stderr) == (
        2,
        f"run {parked} is a run of job 'gated', but tests.approval_defs:looped is job 'looped'\n",
    )
    unknown = run_cli("resume", "nope", target, home=dagster_home)
    assert unknown.returncode == 2 and "'nope' is not a run id" in unknown.stderr
    resumed = run_cli("resume", parked, target, home=dagster_home)
    assert resumed.returncode == 0, resumed.stderr
    (child,) = children(instance, parked)
    final = Post(topic="otters", draft="draft about otters", published="published: draft about otters")
    assert resumed.stdout == (
        f"resumed run {parked} as {child}\nfinal context (Post):\n{final.model_dump_json(indent=2)}\n"
    )
    assert load_final_context(gated, child, instance=instance) == final
    assert requests.read_text().splitlines() == ["Write about otters"]  # the model was not asked again
    assert "write" not in started(instance, child)  # the upstream step did not run again
    tags = instance.get_run_by_id(child).tags  # type: ignore[union-attr]
    assert (tags["flujo/resumed_by"], tags["flujo/resumed_because"]) == (
        "flujo-dagster resume",
        "review: approve by ana",
    )
    again = run_cli("resume", parked, target, home=dagster_home)  # exactly once: the first resume again
    assert again.stdout.startswith(f"resumed run {parked} as {child}\n") and children(instance, parked) == [child]
    not_parked = run_cli("resume", child, target, home=dagster_home)
    assert (not_parked.returncode, not_parked.stderr) == (
        2,
        f"run {child} is not parked at an approval gate (status SUCCESS): nothing to resume\n",
    )
    assert sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs)).skip_message == (
        "nothing to resume"
    )
