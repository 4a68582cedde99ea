"""Materializing a subset of a pipeline's assets: only the steps the selected assets need run, the keys made
upstream of the subset load from their latest materialization (of the same partition), and a value that was never
materialized fails the run, naming pipeline, key, asset and partition, before any model call."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Literal

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, Definitions
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Pipeline, Price, StaticPartitions, agent_step, build_definitions, step

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
CALLS: Counter[str] = Counter()


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Echoes the prompt, so a value shows what it was made from; counts every request."""
    CALLS["model"] += 1
    prompt = next(p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    return ModelResponse(parts=[TextPart(f"<{prompt}>")])


RUNTIME = AgentRuntime(
    model=FunctionModel(answer, model_name="counted"),
    prices={"function:counted": Price(input_per_mtok=0, output_per_mtok=0)},
)
AGENT = Agent("openai:gpt-5-mini", defer_model_check=True)


class Chain(BaseModel):
    topic: Literal["a", "b", "c"] = "a"
    facts: str | None = None
    outline: str | None = None
    report: str | None = None


@step
def outline(facts: str | None) -> str:
    CALLS["outline"] += 1
    return f"outline of {facts}"


def chain(*, partitioned: bool = False) -> Pipeline:
    """Three assets in a row; the last (an agent step) reads only the one before it."""
    return Pipeline(
        "chain",
        context=Chain,
        steps=[
            agent_step("facts", agent=AGENT, prompt="facts about {topic}"),
            outline,
            agent_step("report", agent=AGENT, prompt="report on {outline}"),
        ],
        assets=["facts", "outline", "report"],
        partitions=StaticPartitions(keys=["a", "b", "c"], input_key="topic") if partitioned else None,
    )


def _defs(pipeline: Pipeline) -> Definitions:
    return build_definitions(pipelines=[pipeline], resources={"agent_runtime": RUNTIME})


def _steps(instance: DagsterInstance, run_id: str) -> set[str]:
    return {
        e.step_key.split(".")[-1]
        for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)
        if e.step_key
    }


def _materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return {e.dagster_event.asset_key.path[-1] for e in events if e.dagster_event and e.dagster_event.asset_key}


def _failure(instance: DagsterInstance, run_id: str) -> str:
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    return "\n".join(
        str(e.dagster_event.step_failure_data.error)
        for e in failures
        if e.dagster_event and e.dagster_event.step_failure_data
    )


REPORT = AssetKey(["chain", "report"])


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    CALLS.clear()


def test_the_last_asset_alone_runs_no_upstream_step(instance: DagsterInstance) -> None:
    defs = _defs(chain())
    job = defs.resolve_job_def("chain")
    assert job.execute_in_process(instance=instance, run_config=QUIET).success
    assert CALLS == {"model": 2, "outline": 1}
    CALLS.clear()
    shutil.rmtree(Path(instance.storage_directory()) / "flujo" / "assets")  # loads follow the materialization events
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[REPORT])
    assert sub.success
    assert CALLS == {"model": 1}  # the report's own request; facts and outline are not recomputed
    assert _steps(instance, sub.run_id) == {"flujo_inputs", "report", "flujo_context"}
    assert _materialized(instance, sub.run_id) == {"report"}
    value = defs.load_asset_value(REPORT, instance=instance)
    assert value == "<report on outline of <facts about a>>"  # made from the previous run's outline


def test_a_subset_whose_upstream_was_never_materialized_fails_before_any_model_call(instance: DagsterInstance) -> None:
    job = _defs(chain()).resolve_job_def("chain")
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[REPORT], raise_on_error=False)
    assert not sub.success
    assert CALLS == {}
    assert _steps(instance, sub.run_id) == set()  # flujo_inputs refused the run: no step succeeded
    message = _failure(instance, sub.run_id)
    assert (
        "pipeline 'chain': this run materializes a subset of its assets and needs key 'outline' from asset "
        "chain/outline, which has never been materialized. Materialize asset chain/outline first, or include it "
        "in the selection."
    ) in message


def test_a_partitioned_subset_loads_the_same_partition(instance: DagsterInstance) -> None:
    defs = _defs(chain(partitioned=True))
    job = defs.resolve_job_def("chain")
    for partition in ("a", "b"):
        assert job.execute_in_process(instance=instance, run_config=QUIET, partition_key=partition).success
    CALLS.clear()
    sub = job.execute_in_process(instance=instance, run_config=QUIET, partition_key="b", asset_selection=[REPORT])
    assert sub.success and CALLS == {"model": 1}
    assert (
        defs.load_asset_value(REPORT, instance=instance, partition_key="b") == "<report on outline of <facts about b>>"
    )
    CALLS.clear()
    never = job.execute_in_process(
        instance=instance, run_config=QUIET, partition_key="c", asset_selection=[REPORT], raise_on_error=False
    )
    assert not never.success and CALLS == {}
    assert "needs key 'outline' from asset chain/outline, partition 'c', which has never been materialized" in (
        _failure(instance, never.run_id)
    )


def test_subsetting_leaves_the_asset_graph_as_it_was() -> None:
    defs = _defs(chain())
    specs = {s.key.path[-1]: s for s in defs.resolve_all_asset_specs()}
    assert {d.asset_key.path[-1] for d in specs["report"].deps} == {"outline"}
    assert {d.asset_key.path[-1] for d in specs["outline"].deps} == {"facts"}
    (assets,) = [a for a in defs.resolve_asset_graph().assets_defs if a.keys]
    assert assets.can_subset
