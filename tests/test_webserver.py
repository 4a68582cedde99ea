"""The example code location loads in the real `dagster-webserver`, and its job and asset lineage show in GraphQL.

Starts `dagster-webserver -w workspace.yaml` on 127.0.0.1 as a subprocess (its own process group, so the gRPC
code server it spawns is stopped with it), waits for `/server_info`, then asks `/graphql` what the UI would show.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEBSERVER = Path(sys.executable).parent / "dagster-webserver"
BOOT_TIMEOUT_S = 90.0
LOCATION = "definitions:defs"

# Never route 127.0.0.1 through a proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Webserver:
    url: str
    log: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with _opener.open(request, timeout=30) as response:
            payload: dict[str, Any] = json.load(response)
        assert "errors" not in payload, payload["errors"]
        data: dict[str, Any] = payload["data"]
        return data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_info(url: str) -> dict[str, Any] | None:
    try:
        with _opener.open(f"{url}/server_info", timeout=2) as response:
            info: dict[str, Any] = json.load(response)
            return info
    except (OSError, ValueError):  # not listening yet (URLError is an OSError), or a half-started response
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group (webserver + gRPC code server), then SIGKILL what is left."""
    pgid = proc.pid  # start_new_session=True: the webserver leads its own group
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    home = tmp_path_factory.mktemp("webserver_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    log = home / "webserver.log"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("FLUJO_DAGSTER_LIVE", None)  # the offline model: no provider key needed, nothing leaves the machine
    url = f"http://127.0.0.1:{_free_port()}"
    port = url.rsplit(":", 1)[1]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(WEBSERVER), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            while _server_info(url) is None:
                if proc.poll() is not None:
                    pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{log.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"no /server_info within {BOOT_TIMEOUT_S} s:\n{log.read_text()}")
                time.sleep(0.25)
            yield Webserver(url=url, log=log)
        finally:
            _stop(proc)


LOCATION_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name repositories { name jobs { name } } }
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

JOB_QUERY = """
query Job($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { name solidHandles { handleID solid { name definition { __typename name } } } }
    ... on PythonError { message }
  }
}
"""

ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    jobNames
    dependencyKeys { path }
    dependedByKeys { path }
  }
}
"""


def _repository(server: Webserver) -> dict[str, Any]:
    workspace = server.graphql(LOCATION_QUERY)["workspaceOrError"]
    assert workspace["__typename"] == "Workspace", workspace
    entries = {e["name"]: e for e in workspace["locationEntries"]}
    assert set(entries) == {LOCATION}, entries
    entry = entries[LOCATION]
    loaded = entry["locationOrLoadError"]
    assert loaded is not None, entry
    assert loaded["__typename"] == "RepositoryLocation", (
        f"code location failed to load: {loaded.get('message')}\n{''.join(loaded.get('stack') or [])}"
    )
    assert entry["loadStatus"] == "LOADED"
    (repository,) = loaded["repositories"]
    return dict(repository)


def test_server_info(webserver: Webserver) -> None:
    info = _server_info(webserver.url)
    assert info is not None
    assert info["dagster_version"] == dagster.__version__  # the installed one: CI runs both ends of the range


def test_code_location_loads_with_digest_job(webserver: Webserver) -> None:
    repository = _repository(webserver)
    assert "digest" in {j["name"] for j in repository["jobs"]}

    selector = {"repositoryLocationName": LOCATION, "repositoryName": repository["name"], "pipelineName": "digest"}
    job = webserver.graphql(JOB_QUERY, {"selector": selector})["pipelineOrError"]
    assert job["__typename"] == "Pipeline", job
    handles = job["solidHandles"]
    ops = {h["solid"]["name"] for h in handles if h["solid"]["definition"]["__typename"] == "SolidDefinition"}
    assert {"flujo_inputs", "sources", "draft", "critique", "report", "flujo_context"} <= ops, ops


def test_digest_assets_and_lineage(webserver: Webserver) -> None:
    _repository(webserver)  # a load error would leave no asset nodes; report it as such
    nodes = {"/".join(n["assetKey"]["path"]): n for n in webserver.graphql(ASSETS_QUERY)["assetNodes"]}
    assert {"digest/sources", "digest/draft", "digest/report"} <= set(nodes), sorted(nodes)

    def deps(key: str) -> set[str]:
        return {"/".join(d["path"]) for d in nodes[key]["dependencyKeys"]}

    def dependents(key: str) -> set[str]:
        return {"/".join(d["path"]) for d in nodes[key]["dependedByKeys"]}

    assert deps("digest/sources") == set()
    assert deps("digest/draft") == {"digest/sources"}
    assert deps("digest/report") == {"digest/draft", "digest/sources"}  # through the non-asset critique op
    assert {"digest/draft", "digest/report"} <= dependents("digest/sources")
    assert "digest/report" in dependents("digest/draft")
    for key in ("digest/sources", "digest/draft", "digest/report"):
        assert "digest" in nodes[key]["jobNames"], (key, nodes[key]["jobNames"])
