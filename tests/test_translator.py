"""`FlujoDagsterTranslator.get_asset_spec`: the default specs (kinds from the producing steps, flujo's metadata), a
subclass adjusting them with `replace_attributes`/`merge_attributes`, an older subclass of the per-field getters,
the final context as the run's result (an asset only with `context_asset=True`), and the component's
`translation:` block with templates."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    AssetSpec,
    AutomationCondition,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    load_from_defs_folder,
)
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from flujo_dagster import (
    AgentRuntime,
    FlujoDagsterTranslator,
    Pipeline,
    Price,
    agent_step,
    build_definitions,
    load_final_context,
    names,
    run_pipeline,
    step,
    validate,
)
from tests.test_asset_checks import evaluations

pytestmark = pytest.mark.filterwarnings(  # dagster's YAML resolution still calls pydantic's `parse_obj_as`
    "ignore:`parse_obj_as` is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)


class Notes(BaseModel):
    topic: str
    outline: str = Field(default="", description="The outline a function writes.")
    draft: str = Field(default="", description="The agent's draft.")
    words: int = 0


@step
def outline(topic: str) -> str:
    return f"outline of {topic}"


@step
def words(draft: str) -> int:
    return len(draft.split())


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
notes = Pipeline(
    "notes",
    context=Notes,
    steps=[outline, agent_step("draft", agent=writer, prompt="Write about {outline}"), words],
    assets=["outline", "draft", "words"],
)
RUNTIME = AgentRuntime(
    model=TestModel(custom_output_text="three short words"),
    prices={"test:test": Price(input_per_mtok=0, output_per_mtok=0)},
)
RESOURCES = {names.AGENT_RUNTIME_KEY: RUNTIME}


class Owned(FlujoDagsterTranslator):
    """A new-style translator: adjusts the default spec."""

    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> AssetSpec:
        spec = super().get_asset_spec(pipeline, key).merge_attributes(owners=["team:research"], tags={"tier": "gold"})
        if key == "draft":
            spec = spec.replace_attributes(
                key=AssetKey(["ai", "draft"]), automation_condition=AutomationCondition.eager(), code_version="prompt-2"
            )
        return spec


class Legacy(FlujoDagsterTranslator):
    """An older translator of the per-field getters."""

    def get_asset_key(self, pipeline: Pipeline, key: str) -> AssetKey:
        return AssetKey(["legacy", key])

    def get_tags(self, pipeline: Pipeline, key: str | None) -> dict[str, str]:
        return {"source": "legacy"}


class Climbing(FlujoDagsterTranslator):
    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> AssetSpec:
        spec = super().get_asset_spec(pipeline, key)
        return spec.replace_attributes(key=AssetKey(["..", "up"])) if key == "words" else spec


def _graph(defs: Definitions) -> AssetGraph:
    return defs.get_repository_def().asset_graph


def _materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return {e.dagster_event.event_specific_data.materialization.asset_key.to_user_string() for e in events}  # type: ignore[union-attr]


def test_the_default_spec_has_the_producers_kinds_and_flujos_metadata() -> None:
    translator = FlujoDagsterTranslator()
    draft = translator.get_asset_spec(notes, "draft")
    assert draft.key == AssetKey(["notes", "draft"])
    assert draft.kinds == {"pydantic-ai", "openai"}  # the agent's model is openai:gpt-5-mini
    assert (draft.group_name, draft.description) == ("notes", "The agent's draft.")
    assert dict(draft.metadata) == {names.PIPELINE: "notes", names.KEY: "draft", names.TYPE: "str"}
    assert (list(draft.owners), draft.code_version, draft.automation_condition) == ([], None, None)
    assert translator.get_asset_spec(notes, "outline").kinds == {"python"}
    context = translator.get_asset_spec(notes, None)
    assert context.key == AssetKey(["notes", "final_context"])
    assert context.kinds == {"pydantic-ai", "python", "openai"}
    # the compiled assets carry them
    graph = _graph(build_definitions(pipelines=[notes], resources=RESOURCES))
    assert graph.get(AssetKey(["notes", "draft"])).kinds == {"pydantic-ai", "openai"}
    assert graph.get(AssetKey(["notes", "words"])).kinds == {"python"}


def test_a_subclass_adjusting_the_spec_shows_on_the_assets_and_the_run(instance: DagsterInstance) -> None:
    graph = _graph(build_definitions(pipelines=[notes], resources=RESOURCES, translator=Owned()))
    draft = graph.get(AssetKey(["ai", "draft"]))
    assert list(draft.owners) == ["team:research"]
    assert draft.tags == {"tier": "gold", "dagster/kind/pydantic-ai": "", "dagster/kind/openai": ""}
    assert draft.automation_condition == AutomationCondition.eager()
    assert draft.code_version == "prompt-2"
    words_node = graph.get(AssetKey(["notes", "words"]))
    assert list(words_node.owners) == ["team:research"] and words_node.automation_condition is None
    assert words_node.parent_keys == {AssetKey(["ai", "draft"])}  # lineage follows the new key
    result = run_pipeline(notes, {"topic": "otters"}, resources=RESOURCES, instance=instance, translator=Owned())
    assert result.context.words == 3
    assert _materialized(instance, result.run_id) == {"notes/outline", "ai/draft", "notes/words"}


def test_an_older_subclass_of_the_per_field_getters_still_works() -> None:
    graph = _graph(build_definitions(pipelines=[notes], resources=RESOURCES, translator=Legacy()))
    draft = graph.get(AssetKey(["legacy", "draft"]))
    assert draft.tags == {"source": "legacy", "dagster/kind/pydantic-ai": "", "dagster/kind/openai": ""}
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "legacy/outline",
        "legacy/draft",
        "legacy/words",
    }


def test_validation_checks_the_key_get_asset_spec_gives() -> None:
    findings = validate(notes, runtime=RUNTIME, translator=Climbing()).errors
    assert [(f.code, f.path) for f in findings] == [("V-NAME", "notes > key:words")]
    assert "['..', 'up']" in findings[0].message


def test_the_final_context_is_the_runs_result_not_an_asset_by_default(instance: DagsterInstance) -> None:
    assets = build_definitions(pipelines=[notes], resources=RESOURCES).resolve_assets_def(AssetKey(["notes", "draft"]))
    assert {k.to_user_string() for k in assets.keys} == {"notes/outline", "notes/draft", "notes/words"}
    result = run_pipeline(notes, {"topic": "otters"}, resources=RESOURCES, instance=instance)
    assert result.context == Notes(topic="otters", outline="outline of otters", draft="three short words", words=3)
    assert load_final_context(notes, result.run_id, instance=instance) == result.context
    assert _materialized(instance, result.run_id) == {"notes/outline", "notes/draft", "notes/words"}
    checks = evaluations(instance, result.run_id)
    passed, _, detail = checks[("notes/words", names.CONTEXT_CHECK)]  # on the last asset
    assert passed and detail == "the run's final context validated as Notes and was stored"


def test_the_final_context_is_an_asset_when_asked_for(instance: DagsterInstance) -> None:
    asked = dataclasses.replace(notes, context_asset=True)
    composed = Pipeline("notes", context=Notes, steps=[outline]) >> Pipeline(
        "rest", context=Notes, steps=[words], context_asset=True
    )
    assert composed.context_asset and not (notes >> words).context_asset
    graph = _graph(build_definitions(pipelines=[asked], resources=RESOURCES))
    context = graph.get(AssetKey(["notes", "final_context"]))
    assert context.kinds == {"pydantic-ai", "python", "openai"}
    assert context.parent_keys == {AssetKey(["notes", k]) for k in ("outline", "draft", "words")}
    result = run_pipeline(asked, {"topic": "otters"}, resources=RESOURCES, instance=instance)
    assert result.context.words == 3
    assert "notes/final_context" in _materialized(instance, result.run_id)
    checks = evaluations(instance, result.run_id)
    assert checks[("notes/final_context", names.TYPE_CHECK)][0]
    assert not any(name == names.CONTEXT_CHECK for _, name in checks)


DEFS_YAML = """type: flujo_dagster.FlujoPipelineComponent

attributes:
  pipeline: dg_digest.pipelines:digest
  agent_runtime: dg_digest.offline:offline_runtime
  context_asset: true
  translator:
    group_name: digests
  translation:
    key: "ai/{{ pipeline }}/{{ key }}"
    owners: ["team:research"]
    tags:
      topic_of: "{{ key }}"
    metadata:
      source: "{{ pipeline }}"
    description: "{{ key }} of {{ pipeline }}: {{ spec.description }}"
    code_version: "v{{ 1 + 1 }}"
    automation_condition: "{{ automation_condition.on_cron('0 6 * * *') }}"
"""
PYPROJECT = """[project]
name = "spec_proj"
version = "0.1.0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "spec_proj"
"""


def test_the_component_translation_block_templates_every_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    package = tmp_path / "src" / "spec_proj"
    (package / "defs" / "digest").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "defs" / "digest" / "defs.yaml").write_text(DEFS_YAML)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.delitem(sys.modules, "spec_proj", raising=False)
    defs = load_from_defs_folder(path_within_project=package)
    graph = _graph(defs)
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "ai/dg_digest/sources",
        "ai/dg_digest/draft",
        "ai/dg_digest/report",
        "ai/dg_digest/final_context",  # context_asset: true; {{ key }} is final_context there
    }
    draft = graph.get(AssetKey(["ai", "dg_digest", "draft"]))
    assert draft.group_name == "digests"  # the translator block applies first
    assert list(draft.owners) == ["team:research"]
    assert draft.tags == {"topic_of": "draft", "dagster/kind/pydantic-ai": "", "dagster/kind/openai": ""}
    assert draft.description == "draft of dg_digest: The writer agent's draft."
    assert draft.code_version == "v2"
    assert draft.automation_condition == AutomationCondition.on_cron("0 6 * * *")
    assert draft.metadata["source"] == "dg_digest" and draft.metadata[names.KEY] == "draft"  # merged
