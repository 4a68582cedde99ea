"""A missing provider key fails its step with one line (which step, which model, what to set), never retried and
before any model request; the event log holds that line without a traceback through flujo or the provider; the
CLI prints it as one line. A provider refusing the key (HTTP 401) fails the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from dagster import DagsterEvent, DagsterEventType, DagsterInstance, EnvVar, execute_job, reconstructable
from dagster._utils.error import SerializableErrorInfo
from pydantic_ai.models import override_allow_model_requests

from flujo_dagster import AgentRuntime, ConfigurationError, ProviderSettings, run_pipeline
from flujo_dagster.names import ERROR_CLASS, STEP_PATH
from tests.failures_defs import (
    EXPANDED_PATH,
    UNSET_ENV,
    defs,
    expanded,
    expanded_multiprocess_job,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "flujo-dagster"
SETTING = 'AgentRuntime(providers={"openai": ProviderSettings(api_key=EnvVar("..."))})'


def missing(path: str) -> str:
    """The one line a missing OPENAI_API_KEY fails `path` with."""
    return f"{path}: model openai:gpt-5-mini has no API key: set OPENAI_API_KEY, or {SETTING}"


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", UNSET_ENV):
        monkeypatch.delenv(name, raising=False)


def the_failure(instance: DagsterInstance, run_id: str) -> DagsterEvent:
    """The run's one step failure, after a single attempt: no retry and no attempt-failed warning."""
    (failure,) = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    assert instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY) == []
    assert [e for e in instance.all_logs(run_id) if "trying again" in e.user_message] == []
    assert failure.dagster_event is not None
    return failure.dagster_event


def assert_one_line(event: DagsterEvent, line: str, path: str, *, where: str = "") -> None:
    """The failure is `Failure(allow_retries=False)` describing `line`, chained from the ConfigurationError alone:
    its message, with no frame of its own and nothing it was chained from; no provider frame anywhere. `where`: the
    op's path, when the failing step runs inside an inline op."""
    data = event.step_failure_data
    assert data is not None and data.error is not None and data.user_failure_data is not None
    assert data.user_failure_data.description == f"ConfigurationError{where}: {line}"
    assert data.user_failure_data.metadata[STEP_PATH].value == path
    assert data.user_failure_data.metadata[ERROR_CLASS].value == "ConfigurationError"
    error: SerializableErrorInfo = data.error
    assert error.cls_name == "Failure"
    cause = error.cause
    assert cause is not None and cause.cls_name == "ConfigurationError"
    assert cause.message == f"flujo_dagster.errors.ConfigurationError: {line}\n"
    assert (cause.stack, cause.cause, cause.context) == ([], None, None)
    assert error.context is None
    shown = error.to_string()
    assert "pydantic_ai" not in shown and "openai/" not in shown and "UserError" not in shown


def test_a_missing_key_fails_an_expanded_step_with_one_line(instance: DagsterInstance) -> None:
    result = defs.resolve_job_def("expanded").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert_one_line(the_failure(instance, result.run_id), missing(EXPANDED_PATH), EXPANDED_PATH)


def test_a_missing_key_fails_an_inline_step_with_one_line(instance: DagsterInstance) -> None:
    result = defs.resolve_job_def("inlined").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    event = the_failure(instance, result.run_id)
    assert_one_line(
        event, missing("inlined > group:g > agent:title"), "inlined > group:g", where=" at inlined > group:g"
    )


def test_run_pipeline_reports_the_one_line(instance: DagsterInstance) -> None:
    result = run_pipeline(expanded, instance=instance)
    assert not result.success
    assert result.error == f"step title: flujo_dagster.errors.ConfigurationError: {missing(EXPANDED_PATH)}"


def test_an_unset_key_variable_fails_a_step_process_with_one_line(instance: DagsterInstance) -> None:
    """Under the multiprocess executor, the key read from a variable the resource names (`EnvVar`)."""
    with execute_job(reconstructable(expanded_multiprocess_job), instance=instance) as result:
        assert not result.success
        run_id = result.run_id
    line = (
        f"{EXPANDED_PATH}: model openai:gpt-5-mini has no API key: set {UNSET_ENV} (read by the agent_runtime "
        f'resource\'s providers["openai"] api_key=EnvVar("{UNSET_ENV}"))'
    )
    assert_one_line(the_failure(instance, run_id), line, EXPANDED_PATH)


class _Refusing(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that refuses every key with HTTP 401, counting the requests."""

    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        body = json.dumps({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def refusing() -> Iterator[str]:
    """A local server on 127.0.0.1 that answers 401: its base URL."""
    _Refusing.requests = 0
    server = HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    thread.join()
    server.server_close()


def test_an_unset_key_variable_makes_no_request(instance: DagsterInstance, refusing: str) -> None:
    """Requests allowed and a server listening: the unset variable still stops the step before any request."""
    runtime = AgentRuntime(providers={"openai": ProviderSettings(api_key=EnvVar(UNSET_ENV), base_url=refusing)})
    with override_allow_model_requests(True):
        result = run_pipeline(expanded, instance=instance, resources={"agent_runtime": runtime})
    assert not result.success and f"has no API key: set {UNSET_ENV} (" in (result.error or "")
    assert _Refusing.requests == 0


# pydantic-ai (newer than 2.62) warns, on request, that its provider deprecates the model; filtered by message, since
# the class (pydantic_ai.exceptions.DeprecatedModelWarning) does not exist at the lowest supported pydantic-ai.
@pytest.mark.filterwarnings("ignore:Model .* is deprecated by its provider:UserWarning")
def test_a_refused_key_fails_the_step_with_one_line(instance: DagsterInstance, refusing: str) -> None:
    runtime = AgentRuntime(providers={"openai": ProviderSettings(api_key="sk-wrong", base_url=refusing)})
    with override_allow_model_requests(True):
        result = run_pipeline(expanded, instance=instance, resources={"agent_runtime": runtime})
    line = (
        f"{EXPANDED_PATH}: model openai:gpt-5-mini was refused by its provider (HTTP 401): check its API key (its "
        'environment variable, or AgentRuntime(providers={"openai": ProviderSettings(api_key=...)}))'
    )
    assert_one_line(the_failure(instance, result.run_id), line, EXPANDED_PATH)
    assert _Refusing.requests == 1  # not retried: neither by flujo, nor by the step's Retry, nor by the client


def test_the_cli_prints_the_missing_key_as_one_line(dagster_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "OPENAI_BASE_URL", "DAGSTER_HOME"}}
    ran = subprocess.run(
        [str(SCRIPT), "run", "tests.failures_defs:expanded", "--log-level", "CRITICAL"],
        cwd=ROOT,
        env={**env, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 1
    assert ran.stderr.splitlines() == [
        f"run failed: step title: flujo_dagster.errors.ConfigurationError: {missing(EXPANDED_PATH)}"
    ]


@pytest.mark.parametrize(
    ("model", "variable"),
    [("deepseek:deepseek-chat", "DEEPSEEK_API_KEY"), ("openrouter:openai/gpt-4o", "OPENROUTER_API_KEY")],
)
def test_other_providers_missing_keys_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, model: str, variable: str
) -> None:
    """The variable is read from pydantic-ai's own error, so every provider's is named, not OpenAI's alone."""
    monkeypatch.delenv(variable, raising=False)
    provider = model.partition(":")[0]
    with pytest.raises(ConfigurationError) as raised:
        AgentRuntime().build_model(model, where="p > agent:t")
    assert str(raised.value) == (
        f"p > agent:t: model {model} has no API key: set {variable}, or "
        f'AgentRuntime(providers={{"{provider}": ProviderSettings(api_key=EnvVar("..."))}})'
    )
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # shown alone


def test_a_missing_base_url_is_not_called_a_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError) as raised:
        AgentRuntime().build_model("ollama:llama3", where="p > agent:t")
    assert str(raised.value).startswith("p > agent:t: model 'ollama:llama3' cannot be built: Set the `OLLAMA_BASE_URL`")
    assert "API key" not in str(raised.value)
