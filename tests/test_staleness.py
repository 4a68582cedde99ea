"""Staleness from code versions: each step's version covers what determines its output (prompt, model, settings,
output type, tools, instructions; a function's source), is the same in every process, and changes with nothing
else; the compiled ops and assets carry it; and a changed prompt or model makes exactly the changed step's assets
and those downstream of them stale, as the webserver's GraphQL and Dagster's Python resolver both report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, Definitions, GraphDefinition, OpDefinition
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext

from flujo_dagster import (
    AgentRuntime,
    Branch,
    FlujoDagsterTranslator,
    Loop,
    Pipeline,
    Retry,
    agent_step,
    build_definitions,
    names,
    step,
)
from flujo_dagster.dsl.steps import AgentStep, FunctionStep
from flujo_dagster.runtime.code_versions import callable_source, node_version, step_version
from tests import staleness_defs
from tests.staleness_defs import FREE, story

ROOT = Path(__file__).resolve().parents[1]
DEFS = str(Path(__file__).with_name("staleness_defs.py"))
MODEL = "openai:gpt-5-mini"


def _versions(defs: Definitions) -> dict[str, str | None]:
    graph = defs.get_repository_def().asset_graph
    return {key.to_user_string(): graph.get(key).code_version for key in graph.get_all_asset_keys()}


def _draft(agent: Agent[Any, Any] | None = None, **changes: Any) -> AgentStep:
    settings: dict[str, Any] = {"agent": agent or Agent(MODEL, defer_model_check=True), "prompt": "Write {outline}"}
    return agent_step("draft", **(settings | changes))


# --- deterministic across processes -------------------------------------------------------------------------------

SUBPROCESS = """
import json
from tests import staleness_defs
from tests.test_staleness import _versions, exec_built
from flujo_dagster.runtime.code_versions import callable_source
print(json.dumps({"assets": _versions(staleness_defs.before), "exec": callable_source(exec_built())}))
"""


def exec_built() -> object:
    """A function with no source file (made by `exec`): versioned by module, name and bytecode."""
    scope: dict[str, Any] = {}
    exec(compile("def made(x):\n    return [x, 'made', 1.5]\n", "<generated>", "exec"), scope)
    return scope["made"]


def test_a_function_whose_file_is_not_its_source_is_versioned_by_its_bytecode() -> None:
    """`exec` with a file name of another file (a doc page, a file edited since): `inspect.getsource` reads lines
    that are not the function and fails to tokenize them; the version falls back, the definitions still load."""
    scope: dict[str, object] = {"__name__": "doc_example"}
    exec(compile("def made(x):\n    return x\n", str(ROOT / "docs" / "assets.md"), "exec"), scope)
    assert re.fullmatch(r"doc_example\.made:[0-9a-f]+", callable_source(scope["made"]))


def test_versions_are_the_same_in_another_process() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "4242"}  # another process, other hash seeds
    out = subprocess.run([sys.executable, "-c", SUBPROCESS], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout.strip().splitlines()[-1])
    here = _versions(staleness_defs.before)
    assert there == {"assets": here, "exec": callable_source(exec_built())}
    assert len(set(here.values())) == 4 and all(v and len(v) == 16 for v in here.values())
    assert "0x" not in callable_source(exec_built()) and "<generated>" not in callable_source(exec_built())


# --- what a version covers -----------------------------------------------------------------------------------------


class Short(BaseModel):
    text: str


class Long(BaseModel):
    text: str
    notes: list[str]


def search(query: str) -> str:
    """Search the web."""
    return query


def search_paged(query: str, page: int) -> str:
    """Search the web."""
    return query


def lookup(query: str) -> str:
    """Look a word up."""
    return query


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(_draft(prompt="Write {outline} briefly"), id="prompt template"),
        pytest.param(_draft(prompt=lambda outline: f"Write {outline}"), id="prompt function"),
        pytest.param(_draft(model="openai:gpt-5-nano"), id="step model"),
        pytest.param(_draft(Agent("openai:gpt-5-nano", defer_model_check=True)), id="agent model"),
        pytest.param(_draft(model_settings={"temperature": 0.2}), id="step settings"),
        pytest.param(
            _draft(Agent(MODEL, defer_model_check=True, model_settings={"temperature": 0.2})), id="agent settings"
        ),
        pytest.param(_draft(Agent(MODEL, defer_model_check=True, output_type=Short)), id="output type"),
        pytest.param(_draft(Agent(MODEL, defer_model_check=True, tools=[search])), id="a tool added"),
        pytest.param(_draft(Agent(MODEL, defer_model_check=True, instructions="Be brief.")), id="instructions"),
        pytest.param(_draft(Agent(MODEL, defer_model_check=True, system_prompt="You are terse.")), id="system prompt"),
        pytest.param(_draft(deps=lambda outline: {"outline": outline}), id="deps function"),
    ],
)
def test_an_agent_steps_version_changes_with_what_determines_its_output(changed: AgentStep) -> None:
    assert step_version(changed) != step_version(_draft())


def test_output_schema_tools_and_instructions_are_compared_by_content() -> None:
    def agent(**kw: Any) -> Agent[Any, Any]:
        return Agent(MODEL, defer_model_check=True, **kw)

    assert step_version(_draft(agent(output_type=Short))) != step_version(_draft(agent(output_type=Long)))
    assert step_version(_draft(agent(tools=[search]))) != step_version(_draft(agent(tools=[search_paged])))
    assert step_version(_draft(agent(tools=[search]))) != step_version(_draft(agent(tools=[lookup])))
    assert step_version(_draft(agent(tools=[search, lookup]))) == step_version(_draft(agent(tools=[lookup, search])))
    assert step_version(_draft(agent(instructions="A"))) != step_version(_draft(agent(instructions="B")))
    dynamic = agent()

    @dynamic.system_prompt
    def today(ctx: RunContext[None]) -> str:
        return "It is Monday."

    assert step_version(_draft(dynamic)) != step_version(_draft(agent()))
    # the same settings in another order are the same settings
    one = _draft(model_settings={"temperature": 0.2, "max_tokens": 50})
    assert step_version(one) == step_version(_draft(model_settings={"max_tokens": 50, "temperature": 0.2}))


def test_unrelated_changes_keep_the_version() -> None:
    base = step_version(_draft())
    assert step_version(_draft(Agent(MODEL, defer_model_check=True))) == base  # another, equal agent object
    assert step_version(_draft(retry=Retry(max_retries=3), timeout=timedelta(seconds=9), pool="slow")) == base
    assert step_version(_draft(output_key="text")) == base


def test_the_model_is_the_one_the_step_runs_on_in_this_location() -> None:
    draft = _draft()
    moved = AgentRuntime(step_models={"draft": "openai:gpt-5-nano"}, prices={"openai:gpt-5-nano": FREE})
    assert step_version(draft, AgentRuntime().model_id_for) == step_version(draft)
    assert step_version(draft, moved.model_id_for) == step_version(_draft(model="openai:gpt-5-nano"))
    assert step_version(draft, moved.model_id_for) != step_version(draft)


def count_words(draft: str) -> int:
    return len(draft.split())


def count_letters(draft: str) -> int:
    return len(draft)


def test_a_function_steps_version_is_its_source() -> None:
    words = FunctionStep(name="words", fn=count_words)
    assert step_version(words) == step_version(FunctionStep(name="words", fn=count_words, timeout=timedelta(1)))
    assert step_version(words) != step_version(FunctionStep(name="words", fn=count_letters))
    assert "len(draft.split())" in callable_source(count_words)
    assert callable_source(exec_built()) == callable_source(exec_built())  # no source: module, name, bytecode


def _loop(prompt: str, until: Any) -> Loop:
    return Loop("refine", body=[_draft(prompt=prompt)], until=until, max_iterations=2)


def long_enough(draft: str) -> bool:
    return len(draft) > 10


def very_long(draft: str) -> bool:
    return len(draft) > 99


def test_control_flow_versions_cover_conditions_and_children() -> None:
    loop = _loop("Write {outline}", long_enough)
    assert node_version(loop) == node_version(_loop("Write {outline}", long_enough))
    assert node_version(loop) != node_version(_loop("Write {outline}", very_long))
    assert node_version(loop) != node_version(_loop("Rewrite {outline}", long_enough))
    # its own part (its gates and join) does not change with a child, only the whole does (an inline op)
    assert node_version(loop, whole=False) == node_version(_loop("Rewrite {outline}", long_enough), whole=False)
    assert node_version(loop, whole=False) != node_version(_loop("Write {outline}", very_long), whole=False)
    branch = Branch("pick", on="topic", cases={"a": [_draft()]})
    assert node_version(branch) != node_version(Branch("pick", on="outline", cases={"a": [_draft()]}))
    assert node_version(branch) != node_version(Branch("pick", on="topic", cases={"b": [_draft()]}))


# --- on the compiled ops and assets ------------------------------------------------------------------------------


def test_ops_and_assets_carry_the_versions() -> None:
    defs = staleness_defs.before
    graph = defs.get_assets_def(AssetKey(["story", "draft"])).node_def
    assert isinstance(graph, GraphDefinition)
    draft, words = graph.node_dict["draft"].definition, graph.node_dict["words"].definition
    assert isinstance(draft, OpDefinition) and isinstance(words, OpDefinition)
    pipeline = story("Write about {outline}")
    runtime = defs.resources[names.AGENT_RUNTIME_KEY]
    assert isinstance(runtime, AgentRuntime)
    agent = next(s for s in pipeline.steps if s.name == "draft")
    assert isinstance(agent, AgentStep)
    assert draft.output_defs[0].code_version == step_version(agent, runtime.model_id_for)
    function = next(s for s in pipeline.steps if s.name == "words")
    assert isinstance(function, FunctionStep) and words.output_defs[0].code_version == step_version(function)
    assert all(v is not None for v in _versions(defs).values())


class Pinned(FlujoDagsterTranslator):
    def get_code_version(self, pipeline: Pipeline, key: str | None) -> str | None:
        return "v7" if key == "draft" else None


def test_a_translator_chooses_its_own_version() -> None:
    resources = {names.AGENT_RUNTIME_KEY: staleness_defs.runtime()}
    defs = build_definitions(pipelines=[story("Write about {outline}")], resources=resources, translator=Pinned())
    versions = _versions(defs)
    assert versions["story/draft"] == "v7"
    assert versions["story/words"] == _versions(staleness_defs.before)["story/words"]


class Draft(BaseModel):
    topic: str
    draft: str = ""
    note: str = ""
    summary: str = ""


@step
def note(topic: str) -> str:
    return topic


@step
def summary(draft: str) -> str:
    return draft[:10]


def _looped(prompt: str) -> dict[str, str | None]:
    loop = Loop(
        "refine",
        body=[agent_step("draft", agent=Agent(MODEL, defer_model_check=True), prompt=prompt)],
        until=lambda draft: bool(draft),
        max_iterations=2,
    )
    pipeline = Pipeline("looped", context=Draft, steps=[note, loop, summary], assets=["note", "draft", "summary"])
    runtime = staleness_defs.runtime()
    return _versions(build_definitions(pipelines=[pipeline], resources={names.AGENT_RUNTIME_KEY: runtime}))


def test_a_key_written_in_a_loop_is_versioned_by_the_loops_steps() -> None:
    before, after = _looped("Write about {topic}"), _looped("Write briefly about {topic}")
    assert before["looped/note"] == after["looped/note"]
    assert before["looped/draft"] != after["looped/draft"]
    assert before["looped/summary"] != after["looped/summary"]  # downstream of the changed step


# --- staleness in Dagster --------------------------------------------------------------------------------------

STALENESS = "{ assetNodes { assetKey { path } opVersion staleStatus staleCauses { key { path } category reason } } }"
INPUTS = {"ops": {"story_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}}}


def _graphql_staleness(instance: DagsterInstance, attribute: str) -> dict[str, tuple[str, set[tuple[str, str]]]]:
    """Each asset's stale status and causes (asset, reason), as the webserver reports them for `attribute`."""
    with define_out_of_process_context(DEFS, attribute, instance) as context:
        result = execute_dagster_graphql(context, STALENESS)
    assert result.errors is None
    return {
        "/".join(n["assetKey"]["path"]): (
            n["staleStatus"],
            {("/".join(c["key"]["path"]), c["reason"]) for c in n["staleCauses"]},
        )
        for n in result.data["assetNodes"]
    }


def _python_staleness(instance: DagsterInstance, defs: Definitions) -> dict[str, str]:
    graph = defs.get_repository_def().asset_graph
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=datetime.now(UTC), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    return {key.to_user_string(): resolver.get_status(key).value for key in graph.get_all_asset_keys()}


def test_a_changed_prompt_or_model_makes_only_its_downstream_assets_stale(instance: DagsterInstance) -> None:
    result = staleness_defs.before.resolve_job_def("story").execute_in_process(instance=instance, run_config=INPUTS)
    assert result.success
    materialized = instance.get_latest_materialization_event(AssetKey(["story", "draft"]))
    assert materialized is not None and materialized.asset_materialization is not None
    assert (
        materialized.asset_materialization.tags["dagster/code_version"]
        == _versions(staleness_defs.before)["story/draft"]
    )

    unchanged = _graphql_staleness(instance, "before")
    assert {k: s for k, (s, _) in unchanged.items()} == dict.fromkeys(
        ["story/outline", "story/draft", "story/words", "story/title"], "FRESH"
    )

    prompt = _graphql_staleness(instance, "prompt_changed")
    new_code = "has a new code version"
    assert prompt == {
        "story/outline": ("FRESH", set()),
        "story/draft": ("STALE", {("story/draft", new_code)}),
        "story/words": ("STALE", {("story/words", new_code)}),  # downstream of the changed step
        "story/title": ("FRESH", set()),
    }
    assert _python_staleness(instance, staleness_defs.prompt_changed) == {k: s for k, (s, _) in prompt.items()}

    model = _graphql_staleness(instance, "model_changed")  # title moved to another model in this location
    assert {k: s for k, (s, _) in model.items()} == {
        "story/outline": "FRESH",
        "story/draft": "FRESH",
        "story/words": "FRESH",
        "story/title": "STALE",
    }
    assert _python_staleness(instance, staleness_defs.model_changed)["story/title"] == StaleStatus.STALE.value


def _styled(style: str) -> Any:
    return lambda topic: f"{style}: {topic}"


def test_a_prompt_function_from_a_factory_changes_with_the_values_it_closes_over() -> None:
    assert callable_source(_styled("terse")) == callable_source(_styled("terse"))
    assert callable_source(_styled("terse")) != callable_source(_styled("lyrical"))
    assert step_version(_draft(prompt=_styled("terse"))) != step_version(_draft(prompt=_styled("lyrical")))


def test_materializing_the_stale_assets_reruns_only_the_changed_steps(instance: DagsterInstance) -> None:
    """What "Materialize stale" launches: a run of the stale assets only (a subset of the graph-backed assets)."""
    assert (
        staleness_defs.before.resolve_job_def("story").execute_in_process(instance=instance, run_config=INPUTS).success
    )
    changed = staleness_defs.prompt_changed
    stale = [AssetKey(k.split("/")) for k, s in _python_staleness(instance, changed).items() if s == "STALE"]
    assert sorted(k.to_user_string() for k in stale) == ["story/draft", "story/words"]
    run = changed.resolve_job_def("story").execute_in_process(
        instance=instance, run_config=INPUTS, asset_selection=stale
    )
    ran = {e.step_key for e in run.all_events if e.event_type == DagsterEventType.STEP_SUCCESS}
    assert ran == {"story_graph.flujo_inputs", "story_graph.draft", "story_graph.words"}
    assert set(_python_staleness(instance, changed).values()) == {"FRESH"}
