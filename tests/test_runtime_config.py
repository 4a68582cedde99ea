"""`AgentRuntime` as a Dagster `ConfigurableResource`: model strings are its config (set in the Launchpad);
provider settings (API keys through `EnvVar`, base URLs) are code only, so no run's config can choose where a key
is sent; model objects, declared prices and provider settings survive every copy Dagster makes of the resource,
in process and in the multiprocess executor's step processes."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterInvalidConfigError,
    Definitions,
    EnvVar,
    asset,
    execute_job,
    reconstructable,
    validate_run_config,
)
from pydantic_ai.models import override_allow_model_requests
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.models.test import TestModel

from flujo_dagster import AgentRuntime, AgentStep, ConfigurationError, ProviderSettings, build_definitions
from flujo_dagster.names import AGENT_RUNTIME_KEY, COST_USD, MODEL, MODEL_SOURCE, PRICE_SOURCE
from tests.runtime_defs import PATH, PRICE, SCRIPTED_ID, note, note_job, note_multiprocess_job, runtime

KEY_ENV = "FLUJO_TEST_RUNTIME_API_KEY"
NOWHERE = "http://127.0.0.1:9/v1"
"""A base URL nothing listens on: no test here sends a request (pydantic-ai's ALLOW_MODEL_REQUESTS is off)."""
ANSWER = note.steps[0]
assert isinstance(ANSWER, AgentStep)
JOBS = pytest.mark.parametrize("make_job", [note_job, note_multiprocess_job], ids=["in_process", "multiprocess"])


def launchpad(**config: Any) -> dict[str, Any]:
    """Run config as the Launchpad sends it for the agent_runtime resource."""
    return {"resources": {AGENT_RUNTIME_KEY: {"config": config}}}


def answer_metadata(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    (output,) = [e for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT) if e.step_key == "answer"]
    return {k: v.value for k, v in output.dagster_event.event_specific_data.metadata.items()}  # type: ignore[union-attr]


def run(instance: DagsterInstance, make_job: Any, run_config: dict[str, Any] | None = None) -> str:
    with execute_job(reconstructable(make_job), instance=instance, run_config=run_config) as result:
        assert result.success
        return result.run_id


# --- the model objects outside the config -------------------------------------------------------------------------


@JOBS
def test_a_model_object_and_declared_prices_survive_the_resources_copies(
    instance: DagsterInstance, make_job: Any
) -> None:
    """Dagster rebuilds a ConfigurableResource from its config fields for each run (`_with_updated_values`), in
    this process or in each step process; the scripted model object and its declared price still answer."""
    metadata = answer_metadata(instance, run(instance, make_job))
    assert (metadata[MODEL], metadata[MODEL_SOURCE], metadata[PRICE_SOURCE]) == (SCRIPTED_ID, "offline", "offline")


@JOBS
def test_a_launchpad_model_switches_the_model_of_that_run_only(instance: DagsterInstance, make_job: Any) -> None:
    overridden = answer_metadata(instance, run(instance, make_job, launchpad(model="test")))
    assert (overridden[MODEL], overridden[MODEL_SOURCE], overridden[PRICE_SOURCE]) == (
        "test:test",
        "offline",
        "offline",
    )
    per_step = answer_metadata(instance, run(instance, make_job, launchpad(step_models={"answer": "test"})))
    assert per_step[MODEL] == "test:test"
    assert answer_metadata(instance, run(instance, make_job))[MODEL] == SCRIPTED_ID  # the next run: as built


def test_a_launchpad_model_without_a_price_fails_before_any_request(instance: DagsterInstance) -> None:
    """Validation priced the models the definitions named at load; one chosen in the Launchpad is priced when
    its step starts. A request would fail with pydantic-ai's 'Model requests are not allowed' instead."""
    keyed = AgentRuntime(providers={"openai": ProviderSettings(api_key="k", base_url=NOWHERE)})
    defs = build_definitions(
        pipelines=[note], resources={AGENT_RUNTIME_KEY: keyed}, prices={"openai:gpt-5-mini": PRICE}
    )
    result = defs.resolve_job_def("note").execute_in_process(
        instance=instance, run_config=launchpad(model="openai:no-such-model"), raise_on_error=False
    )
    assert not result.success
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    error = failure.dagster_event.step_failure_data.error  # type: ignore[union-attr]
    assert error.cause is not None and error.cause.cls_name == "PricingNotConfiguredError"
    assert f"model 'openai:no-such-model' at {PATH} has no price" in error.cause.message
    assert not [
        e for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_OUTPUT) if e.step_key == "answer"
    ]
    undeclared_test = runtime()  # prices function:scripted only: the Launchpad's offline `test` costs $0
    defs = build_definitions(pipelines=[note], resources={AGENT_RUNTIME_KEY: undeclared_test})
    result = defs.resolve_job_def("note").execute_in_process(
        instance=instance, run_config=launchpad(model="test"), raise_on_error=False
    )
    assert result.success
    metadata = answer_metadata(instance, result.run_id)
    assert (metadata[MODEL], metadata[PRICE_SOURCE], metadata[COST_USD]) == ("test:test", "offline", 0)


def test_a_launchpad_model_that_cannot_be_built_fails_its_step_naming_it(instance: DagsterInstance) -> None:
    result = note_job().execute_in_process(
        instance=instance, run_config=launchpad(model="gpt-4o"), raise_on_error=False
    )
    assert not result.success
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and cause.cls_name == "ConfigurationError"
    # pydantic-ai's own reason, with the suggestion 2.62 adds ("Did you mean 'openai-chat:gpt-4o'?") and 2.78 not
    built = re.escape(f"{PATH}: model 'gpt-4o' cannot be built: Unknown model: gpt-4o")
    assert re.search(rf"{built}\.( Did you mean '[^']+'\?)? Give a 'provider:model'", cause.message), cause.message


def test_a_suggestion_from_pydantic_ai_ends_its_own_sentence() -> None:
    """pydantic-ai's reason ending in a question is not followed by a stray period; one ending in nothing gets it."""
    with pytest.raises(ConfigurationError) as suggested:  # both ends of the range suggest a model for this one
        AgentRuntime().build_model("claude-sonnet-4-5", where="p > agent:t")
    assert re.fullmatch(
        r"p > agent:t: model 'claude-sonnet-4-5' cannot be built: Unknown model: claude-sonnet-4-5\. Did you mean "
        r"'anthropic:[\w.-]+'\? Give a 'provider:model' string \(or 'test'\) and check the agent_runtime resource's "
        r"providers set in code \(api_key, base_url\)",
        str(suggested.value),
    ), str(suggested.value)
    with pytest.raises(ConfigurationError) as plain:
        AgentRuntime().build_model("no-such-model", where="p > agent:t")
    assert "cannot be built: Unknown model: no-such-model. Give a 'provider:model'" in str(plain.value)


# --- provider settings --------------------------------------------------------------------------------------------


def test_provider_settings_reach_the_built_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-from-env")
    configured = AgentRuntime(
        model="openai:gpt-4o", providers={"openai": ProviderSettings(api_key=EnvVar(KEY_ENV), base_url=NOWHERE)}
    )
    assert configured.providers["openai"].api_key == KEY_ENV  # the name only: the key is read when a model is built
    model = configured.build_model("openai:gpt-4o", where="here")
    assert isinstance(model, OpenAIResponsesModel) and model.model_name == "gpt-4o"
    assert (model.client.api_key, str(model.client.base_url)) == ("sk-from-env", f"{NOWHERE}/")
    assert isinstance(configured.build_model("test", where="here"), TestModel)


def test_provider_settings_and_model_objects_given_in_code_reach_a_run(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any asset can take the resource; in a run that changes its model, the runtime builds its models with the
    provider settings given in code (key from the environment) and still holds the model object."""
    monkeypatch.setenv(KEY_ENV, "sk-in-code")
    scripted = FunctionModel(lambda messages, info: None, model_name="scripted")  # type: ignore[arg-type,return-value]
    seen: list[tuple[object, str | None, str]] = []

    @asset
    def probe(agent_runtime: AgentRuntime) -> None:
        built = agent_runtime.build_model("openai:gpt-4o", where="probe")
        assert isinstance(built, OpenAIResponsesModel)
        seen.append((agent_runtime.model_for(ANSWER)[0], built.client.api_key, str(built.client.base_url)))

    settings = {"openai": ProviderSettings(api_key=EnvVar(KEY_ENV), base_url=NOWHERE)}
    defs = Definitions(assets=[probe], resources={AGENT_RUNTIME_KEY: AgentRuntime(model=scripted, providers=settings)})
    config = launchpad(step_models={"elsewhere": "test"})
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance, run_config=config)
    assert result.success
    assert seen == [(scripted, "sk-in-code", f"{NOWHERE}/")]


def test_the_launchpad_schema_describes_the_fields_and_refuses_bad_values() -> None:
    """Provider settings are no config field: Dagster refuses them in a run's config before launch."""
    job = note_job()
    schema = job.run_config_schema.config_type.fields["resources"].config_type.fields[AGENT_RUNTIME_KEY]  # type: ignore[attr-defined]
    fields = schema.config_type.fields["config"].config_type.fields
    assert set(fields) == {"model", "step_models"}
    assert all(fields[name].description for name in fields)
    assert validate_run_config(job, launchpad(model="test", step_models={"answer": "openai:gpt-5"}))
    with pytest.raises(DagsterInvalidConfigError):
        validate_run_config(job, launchpad(model=3))
    for providers in ({"openai": {"base_url": NOWHERE}}, {"openai": {"api_key": {"env": KEY_ENV}}}):
        with pytest.raises(DagsterInvalidConfigError, match='unexpected config entry "providers"'):
            validate_run_config(job, launchpad(providers=providers))


class _Recorder(BaseHTTPRequestHandler):
    """Records each request's path and Authorization header, and refuses it."""

    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(401)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A local HTTP server (an attacker's) on 127.0.0.1: its base URL and the requests it received."""
    _Recorder.seen = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", _Recorder.seen
    server.shutdown()
    thread.join()
    server.server_close()


def test_run_config_cannot_send_the_deployments_key_elsewhere(
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    recorder: tuple[str, list[tuple[str, str | None]]],
) -> None:
    """A run's config naming another base URL (or another variable as the key) is refused before launch, and a
    model string embedding a URL fails the resource before any request: the server receives nothing."""
    url, seen = recorder
    monkeypatch.setenv("OPENAI_API_KEY", "sk-deployment-secret")
    monkeypatch.setenv(KEY_ENV, "hunter2")
    defs = build_definitions(
        pipelines=[note], resources={AGENT_RUNTIME_KEY: AgentRuntime()}, prices={"openai:gpt-5-mini": PRICE}
    )
    job = defs.resolve_job_def("note")
    for providers in ({"openai": {"base_url": url}}, {"openai": {"base_url": url, "api_key": {"env": KEY_ENV}}}):
        with pytest.raises(DagsterInvalidConfigError, match='unexpected config entry "providers"'):
            job.execute_in_process(instance=instance, run_config=launchpad(providers=providers))
    assert instance.get_runs_count() == 0
    for config in (launchpad(model=f"huggingface:{url}"), launchpad(step_models={"answer": f"openai:{url}"})):
        result = job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)
        assert not result.success
        failures = instance.all_logs(result.run_id, of_type=DagsterEventType.RESOURCE_INIT_FAILURE)
        assert failures and "embeds a URL" in str(failures[0].dagster_event.event_specific_data)  # type: ignore[union-attr]
    assert seen == []
    # the same server set in code does receive the request: the check above would see one
    coded = AgentRuntime(model="openai:gpt-4o", providers={"openai": ProviderSettings(base_url=url)})
    defs = build_definitions(
        pipelines=[note],
        resources={AGENT_RUNTIME_KEY: coded},
        prices={"openai:gpt-4o": PRICE, "openai:gpt-5-mini": PRICE},
    )
    with override_allow_model_requests(True):
        defs.resolve_job_def("note").execute_in_process(instance=instance, raise_on_error=False)
    assert ("/v1/responses", "Bearer sk-deployment-secret") in seen


def test_a_literal_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A literal key given in code is in no repr, str, config default or conflict message; an `EnvVar` is shown by
    its name."""
    literal = AgentRuntime(providers={"openai": ProviderSettings(api_key="sk-literal-secret", base_url=NOWHERE)})
    default = literal.get_resource_definition().config_schema.as_field().default_value
    shown = [repr(literal), str(literal), repr(literal.providers), str(default), literal.python_only_summary()]
    assert all("sk-literal-secret" not in text for text in shown)
    assert "ProviderSettings(api_key=<set>, base_url='http://127.0.0.1:9/v1')" in literal.python_only_summary()
    named = ProviderSettings(api_key=EnvVar(KEY_ENV))
    assert repr(named) == f"ProviderSettings(api_key=EnvVar('{KEY_ENV}'), base_url=None)"


def test_bad_settings_are_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"providers\['nowhere'\]: Unknown provider"):
        AgentRuntime(providers={"nowhere": ProviderSettings(api_key="k")})
    with pytest.raises(ConfigurationError, match=r"AzureProvider does not take base_url; leave it out"):
        AgentRuntime(providers={"azure": ProviderSettings(base_url=NOWHERE)})
    with pytest.raises(ConfigurationError, match=r"providers\['openai'\] is a dict; give ProviderSettings"):
        AgentRuntime(providers={"openai": {"api_key": "k"}})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match=r"AgentRuntime\(model=...\) is a int"):
        AgentRuntime(model=42)  # type: ignore[arg-type]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError) as raised:
        AgentRuntime().build_model("openai:gpt-4o", where="a > agent:b")
    assert str(raised.value) == (
        "a > agent:b: model openai:gpt-4o has no API key: set OPENAI_API_KEY, or "
        'AgentRuntime(providers={"openai": ProviderSettings(api_key=EnvVar("..."))})'
    )
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_the_default_runtime_is_valid_and_unconfigured() -> None:
    default = AgentRuntime()
    assert (default.model, default.step_models, default.providers, default.prices) == (None, {}, {}, {})
    assert (default.model_for(ANSWER), default.model_id_for(ANSWER)) == ((None, "agent"), "openai:gpt-5-mini")


def test_an_unset_api_key_variable_fails_the_step_naming_it_before_any_request(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    unset = AgentRuntime(model="openai:gpt-5-mini", providers={"openai": ProviderSettings(api_key=EnvVar(KEY_ENV))})
    defs = build_definitions(
        pipelines=[note], resources={AGENT_RUNTIME_KEY: unset}, prices={"openai:gpt-5-mini": PRICE}
    )
    result = defs.resolve_job_def("note").execute_in_process(instance=instance, raise_on_error=False)
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and cause.cls_name == "ConfigurationError"
    assert cause.message == (
        f"flujo_dagster.errors.ConfigurationError: {PATH}: model openai:gpt-5-mini has no API key: set {KEY_ENV} "
        f'(read by the agent_runtime resource\'s providers["openai"] api_key=EnvVar("{KEY_ENV}"))\n'
    )
    assert (cause.stack, cause.cause) == ([], None)


def test_provider_settings_apply_to_the_agents_own_model_strings(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No override: the step runs on its agent's `openai:gpt-5-mini`. Without a key anywhere its model cannot be
    built; with the key in the provider settings given in code it is built and gets as far as its request (which
    the tests forbid: pydantic-ai's ALLOW_MODEL_REQUESTS is off)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv(KEY_ENV, "sk-in-code")
    keyed = {"openai": ProviderSettings(api_key=EnvVar(KEY_ENV), base_url=NOWHERE)}
    causes = []
    for providers in (None, keyed):
        defs = build_definitions(
            pipelines=[note],
            resources={AGENT_RUNTIME_KEY: AgentRuntime(providers=providers)},
            prices={"openai:gpt-5-mini": PRICE},
        )
        result = defs.resolve_job_def("note").execute_in_process(instance=instance, raise_on_error=False)
        (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
        cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
        assert cause is not None
        causes.append(cause.message)
    assert f"{PATH}: model openai:gpt-5-mini has no API key: set OPENAI_API_KEY, or " in causes[0]
    assert "Model requests are not allowed" in causes[1]


def test_the_documented_launchpad_config_is_accepted_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run config docs/configuration.md shows for the agent_runtime resource."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-documented")
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    section = doc.split("## The agent runtime (resource `agent_runtime`)", 1)[1]
    (block,) = [b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("yaml")]
    config = yaml.safe_load(block)
    resolved = validate_run_config(note_job(), config)["resources"][AGENT_RUNTIME_KEY]["config"]
    assert (resolved["model"], resolved["step_models"]) == ("openai:gpt-5", {"critique": "test"})


def test_a_launchpad_step_model_naming_no_agent_step_fails_before_any_call(instance: DagsterInstance) -> None:
    """A typo in a run's `step_models` would change nothing; a name built in Python (another pipeline's step in
    the same location) is left alone."""
    result = note_job().execute_in_process(
        instance=instance, run_config=launchpad(step_models={"anwser": "test"}), raise_on_error=False
    )
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and cause.cls_name == "ConfigurationError"
    assert (
        "step_models names ['anwser'], which are no agent steps of pipeline 'note' (its agent steps: ['answer'])"
        in (cause.message)
    )
    shared = AgentRuntime(model=TestModel(), step_models={"elsewhere": "test"}, prices={"test:test": PRICE})
    defs = build_definitions(pipelines=[note], resources={AGENT_RUNTIME_KEY: shared})
    assert defs.resolve_job_def("note").execute_in_process(instance=instance).success
