"""`AgentRuntime` as a Dagster `ConfigurableResource`: model strings and provider settings are its config (set in
the Launchpad, API keys through `EnvVar`); model objects and declared prices, which no config can carry, survive
every copy Dagster makes of the resource, in process and in the multiprocess executor's step processes."""

from __future__ import annotations

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
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.models.test import TestModel

from flujo_dagster import AgentRuntime, AgentStep, ConfigurationError, ProviderSettings, build_definitions
from flujo_dagster.names import AGENT_RUNTIME_KEY, MODEL, MODEL_SOURCE, PRICE_SOURCE
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
    config = launchpad(model="openai:no-such-model", providers={"openai": {"api_key": "k", "base_url": NOWHERE}})
    result = note_job().execute_in_process(instance=instance, run_config=config, raise_on_error=False)
    assert not result.success
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    error = failure.dagster_event.step_failure_data.error  # type: ignore[union-attr]
    assert error.cause is not None and error.cause.cls_name == "PricingNotConfiguredError"
    assert f"model 'openai:no-such-model' at {PATH} has no price" in error.cause.message
    assert not [
        e for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_OUTPUT) if e.step_key == "answer"
    ]
    unpriced_test = runtime()  # prices function:scripted only, so the Launchpad's `test` has none
    defs = build_definitions(pipelines=[note], resources={AGENT_RUNTIME_KEY: unpriced_test})
    result = defs.resolve_job_def("note").execute_in_process(
        instance=instance, run_config=launchpad(model="test"), raise_on_error=False
    )
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and f"model 'test:test' at {PATH} has no price" in cause.message


def test_a_launchpad_model_that_cannot_be_built_fails_its_step_naming_it(instance: DagsterInstance) -> None:
    result = note_job().execute_in_process(
        instance=instance, run_config=launchpad(model="gpt-4o"), raise_on_error=False
    )
    assert not result.success
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and cause.cls_name == "ConfigurationError"
    assert f"{PATH}: model 'gpt-4o' cannot be built: Unknown model: gpt-4o. Give a 'provider:model'" in cause.message


# --- provider settings --------------------------------------------------------------------------------------------


def test_provider_settings_reach_the_built_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-from-env")
    configured = AgentRuntime(
        model="openai:gpt-4o", providers={"openai": ProviderSettings(api_key=EnvVar(KEY_ENV), base_url=NOWHERE)}
    )
    assert configured.providers["openai"].api_key == KEY_ENV  # the name only: the key is not in the config
    resolved = configured.process_config_and_initialize()  # as Dagster resolves it for a run
    assert isinstance(resolved, AgentRuntime) and resolved.providers["openai"].api_key == "sk-from-env"
    for runtime_ in (resolved, configured):  # unresolved, the EnvVar is read when the model is built
        model = runtime_.build_model("openai:gpt-4o", where="here")
        assert isinstance(model, OpenAIResponsesModel) and model.model_name == "gpt-4o"
        assert (model.client.api_key, str(model.client.base_url)) == ("sk-from-env", f"{NOWHERE}/")
    assert isinstance(resolved.build_model("test", where="here"), TestModel)


def test_launchpad_provider_settings_and_model_objects_reach_a_run(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any asset can take the resource; in a run whose config sets the provider (key from the environment),
    the runtime builds its models with those settings and still holds the model object given in Python."""
    monkeypatch.setenv(KEY_ENV, "sk-launchpad")
    scripted = FunctionModel(lambda messages, info: None, model_name="scripted")  # type: ignore[arg-type,return-value]
    seen: list[tuple[object, str | None, str]] = []

    @asset
    def probe(agent_runtime: AgentRuntime) -> None:
        built = agent_runtime.build_model("openai:gpt-4o", where="probe")
        assert isinstance(built, OpenAIResponsesModel)
        seen.append((agent_runtime.model_for(ANSWER)[0], built.client.api_key, str(built.client.base_url)))

    defs = Definitions(assets=[probe], resources={AGENT_RUNTIME_KEY: AgentRuntime(model=scripted)})
    config = launchpad(providers={"openai": {"api_key": {"env": KEY_ENV}, "base_url": NOWHERE}})
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance, run_config=config)
    assert result.success
    assert seen == [(scripted, "sk-launchpad", f"{NOWHERE}/")]


def test_the_launchpad_schema_describes_the_fields_and_refuses_bad_values() -> None:
    job = note_job()
    schema = job.run_config_schema.config_type.fields["resources"].config_type.fields[AGENT_RUNTIME_KEY]  # type: ignore[attr-defined]
    fields = schema.config_type.fields["config"].config_type.fields
    assert set(fields) == {"model", "step_models", "providers"}
    assert all(fields[name].description for name in fields)
    assert validate_run_config(job, launchpad(model="test", step_models={"answer": "openai:gpt-5"}))
    with pytest.raises(DagsterInvalidConfigError):
        validate_run_config(job, launchpad(model=3))
    with pytest.raises(DagsterInvalidConfigError):
        validate_run_config(job, launchpad(providers={"openai": {"api_kee": "k"}}))


def test_bad_settings_are_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match=r"providers\['nowhere'\]: Unknown provider"):
        AgentRuntime(providers={"nowhere": ProviderSettings(api_key="k")})
    with pytest.raises(ConfigurationError, match=r"AzureProvider does not take base_url; leave it out"):
        AgentRuntime(providers={"azure": ProviderSettings(base_url=NOWHERE)})
    with pytest.raises(ConfigurationError, match=r"AgentRuntime\(model=...\) is a int"):
        AgentRuntime(model=42)  # type: ignore[arg-type]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match=r"^a > agent:b: model 'openai:gpt-4o' cannot be built: .*providers"):
        AgentRuntime().build_model("openai:gpt-4o", where="a > agent:b")


def test_a_launchpad_provider_typo_fails_the_run_at_resource_init(instance: DagsterInstance) -> None:
    result = note_job().execute_in_process(
        instance=instance, run_config=launchpad(providers={"opneai": {"api_key": "k"}}), raise_on_error=False
    )
    assert not result.success
    failures = instance.all_logs(result.run_id, of_type=DagsterEventType.RESOURCE_INIT_FAILURE)
    assert failures and "providers['opneai']: Unknown provider" in str(failures[0].dagster_event.event_specific_data)  # type: ignore[union-attr]


def test_the_default_runtime_is_valid_and_unconfigured() -> None:
    default = AgentRuntime()
    assert (default.model, default.step_models, default.providers, default.prices) == (None, {}, {}, {})
    assert (default.model_for(ANSWER), default.model_id_for(ANSWER)) == ((None, "agent"), "openai:gpt-5-mini")


def test_an_unset_api_key_variable_stops_the_run_before_it_starts(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(DagsterInvalidConfigError, match=f'environment variable "{KEY_ENV}" which is not set'):
        note_job().execute_in_process(
            instance=instance, run_config=launchpad(providers={"openai": {"api_key": {"env": KEY_ENV}}})
        )
    assert instance.get_runs_count() == 0


def test_provider_settings_apply_to_the_agents_own_model_strings(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No override: the step runs on its agent's `openai:gpt-5-mini`. Without a key anywhere its model cannot be
    built; with the key in the run's provider settings it is built and gets as far as its request (which the
    tests forbid: pydantic-ai's ALLOW_MODEL_REQUESTS is off)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv(KEY_ENV, "sk-launchpad")
    defs = build_definitions(
        pipelines=[note], resources={AGENT_RUNTIME_KEY: AgentRuntime()}, prices={"openai:gpt-5-mini": PRICE}
    )
    causes = []
    for config in (None, launchpad(providers={"openai": {"api_key": {"env": KEY_ENV}, "base_url": NOWHERE}})):
        result = defs.resolve_job_def("note").execute_in_process(
            instance=instance, run_config=config, raise_on_error=False
        )
        (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
        cause = failure.dagster_event.step_failure_data.error.cause  # type: ignore[union-attr]
        assert cause is not None
        causes.append(cause.message)
    assert f"{PATH}: model 'openai:gpt-5-mini' cannot be built" in causes[0] and "OPENAI_API_KEY" in causes[0]
    assert "Model requests are not allowed" in causes[1]


def test_the_documented_launchpad_config_is_accepted_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run config docs/configuration.md shows for the agent_runtime resource."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-documented")
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    section = doc.split("## The agent runtime (resource `agent_runtime`)", 1)[1]
    (block,) = [b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("yaml")]
    config = yaml.safe_load(block)
    resolved = validate_run_config(note_job(), config)["resources"][AGENT_RUNTIME_KEY]["config"]
    assert (resolved["model"], resolved["providers"]["openai"]["api_key"]) == ("openai:gpt-5", "sk-documented")


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
