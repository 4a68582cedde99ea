"""The example code location, run as Dagster runs it: execute_job on a persistent instance, both executors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    JobDefinition,
    build_schedule_context,
    execute_job,
    materialize,
    reconstructable,
    validate_run_config,
)
from pydantic_ai.models.test import TestModel

from definitions import defs, digest_job, reviewed_digest_job
from definitions.digest import Digest, digest
from definitions.review import ReviewedDigest, review
from flujo_dagster import AgentRuntime, load_final_context, run_pipeline
from tests.multiprocess_defs import digest_multiprocess_job

REVIEW_CONFIG: dict[str, Any] = {
    "ops": {"reviewed_digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}
}
RUN_CONFIG: dict[str, Any] = {
    "ops": {"digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}
}


def _final_context(instance: DagsterInstance, run_id: str) -> Digest:
    value = load_final_context(digest, run_id, instance=instance)
    assert isinstance(value, Digest)
    return value


def test_example_definitions_load() -> None:
    Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("digest")
    assert isinstance(job, JobDefinition)
    assert {n.name for n in job.graph.nodes} == {"digest_graph"}


def test_the_example_location_schedules_the_digest_weekly_with_inputs_the_job_accepts(
    instance: DagsterInstance,
) -> None:
    """`make dev` shows a schedule (stopped until switched on); its tick asks for a run whose config the digest's
    asset job accepts (the inputs under `digest_graph`, as docs/schedules.md gives the path)."""
    schedule = defs.resolve_schedule_def("digest_schedule")
    assert (schedule.cron_schedule, schedule.default_status) == ("0 7 * * 1", DefaultScheduleStatus.STOPPED)
    when = datetime(2026, 12, 7, 7, tzinfo=UTC)
    tick = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when))
    (request,) = tick.run_requests or []
    assert request.run_config == {
        "ops": {"digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}
    }
    assert validate_run_config(defs.resolve_job_def("digest"), request.run_config)


def test_the_orders_asset_is_refreshed_before_the_briefing_reads_it(instance: DagsterInstance) -> None:
    """The briefing's job reads `orders`, it does not materialize it: `orders_schedule` does, half an hour before
    `orders_briefing_schedule` (both stopped until switched on); the briefing's tick gives inputs its job accepts."""
    orders = defs.resolve_schedule_def("orders_schedule")
    briefing = defs.resolve_schedule_def("orders_briefing_schedule")
    assert (orders.cron_schedule, briefing.cron_schedule) == ("30 5 * * *", "0 6 * * *")
    assert orders.default_status == briefing.default_status == DefaultScheduleStatus.STOPPED
    assert defs.resolve_job_def(orders.job_name).asset_layer.selected_asset_keys == {AssetKey(["orders"])}
    when = datetime(2026, 12, 7, 6, tzinfo=UTC)
    tick = briefing.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=when))
    (request,) = tick.run_requests or []
    assert validate_run_config(defs.resolve_job_def("orders_briefing"), request.run_config)


@pytest.mark.parametrize("make_job", [digest_job, digest_multiprocess_job], ids=["in_process", "multiprocess"])
def test_example_runs_with_execute_job(instance: DagsterInstance, make_job: Any) -> None:
    with execute_job(reconstructable(make_job), instance=instance, run_config=RUN_CONFIG) as result:
        assert result.success
        run_id = result.run_id
        materialized = {
            e.asset_key for e in result.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
        }
    assert materialized == {
        AssetKey(["digest", "sources"]),
        AssetKey(["digest", "draft"]),
        AssetKey(["digest", "report"]),
    }  # the final context is the run's result, not an asset (no `context_asset=True`)
    context = _final_context(instance, run_id)
    assert context.topic == "agents"
    assert [s.id for s in context.sources] == ["s3", "s1", "s2"]
    assert context.critique is not None and context.critique.verdict == "publish"
    assert context.report is not None and "[Budgeting LLM calls](https://example.org/llm-budgets)" in context.report
    # the assets' latest values are readable outside the run, through the same IO manager
    assert defs.load_asset_value(AssetKey(["digest", "report"]), instance=instance) == context.report


def test_agent_metadata_names_the_offline_model(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(digest_job), instance=instance, run_config=RUN_CONFIG) as result:
        outputs: dict[str | None, dict[str, Any]] = {}
        for e in result.all_events:  # each step's first output: the key (its asset checks' outputs follow)
            if e.event_type == DagsterEventType.STEP_OUTPUT and e.step_output_data is not None:
                outputs.setdefault(e.step_key, {k: v.value for k, v in e.step_output_data.metadata.items()})
    draft = outputs["digest_graph.draft"]
    assert draft["flujo/model"] == "function:offline-digest"
    assert draft["flujo/model_source"] == "offline"
    assert draft["flujo/requests"] == 1
    assert isinstance(draft["flujo/input_tokens"], int) and draft["flujo/input_tokens"] > 0
    assert isinstance(draft["flujo/output_tokens"], int) and draft["flujo/output_tokens"] > 0
    assert "flujo/model" not in outputs["digest_graph.sources"]


def test_readme_example_builds_loadable_definitions() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    match = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.S)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec", dont_inherit=True), namespace)
    readme_defs = namespace["defs"]
    assert isinstance(readme_defs, Definitions)
    Definitions.validate_loadable(readme_defs)
    nodes = {n.name for n in readme_defs.resolve_job_def("digest").graph.node_named("digest_graph").definition.nodes}
    assert {"refine__i1__draft", "refine__i3__review", "refine__flujo_join", "extras", "route", "route__hold"} <= nodes


def test_readme_upstream_example_reads_the_asset_with_its_resource(instance: DagsterInstance) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    match = re.search(r"### Reading other assets, with resources\n.*?```python\n(.*?)```", readme, re.S)
    assert match is not None
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec", dont_inherit=True), namespace)
    readme_defs: Definitions = namespace["defs"]
    Definitions.validate_loadable(readme_defs)
    graph = readme_defs.get_repository_def().asset_graph
    assert AssetKey(["orders"]) in graph.get(AssetKey(["sales", "total_eur"])).parent_keys  # the lineage edge
    assert materialize([namespace["orders"]], instance=instance).success
    result = readme_defs.resolve_job_def("sales").execute_in_process(instance=instance)
    assert load_final_context(namespace["sales"], result.run_id, instance=instance).total_eur == 180.45


def test_reviewed_digest_example_runs(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(reviewed_digest_job), instance=instance, run_config=REVIEW_CONFIG) as result:
        assert result.success
        run_id = result.run_id
        skipped = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_SKIPPED}
    assert "reviewed_digest_graph.route__hold" in skipped  # the critic approved: the hold case did not run
    assert "reviewed_digest_graph.refine__i2__draft" in skipped  # and the loop exited after one iteration
    context = load_final_context(review, run_id, instance=instance)
    assert isinstance(context, ReviewedDigest)
    assert context.critique is not None and context.critique.verdict == "publish"
    assert context.tags[:2] == ["agents", "approval"]
    assert context.report is not None and context.report.startswith("# This week in agents")


def _doc_block(page: str, heading: str) -> str:
    """The first Python block after `heading` in docs/`page`, as written."""
    text = (Path(__file__).resolve().parent.parent / "docs" / page).read_text()
    match = re.search(rf"{re.escape(heading)}\n.*?```python\n(.*?)```", text, re.S)
    assert match is not None
    return match.group(1)


def test_the_docs_subset_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    block = _doc_block("assets.md", "## Materializing a subset")
    exec(compile(block, "docs/assets.md", "exec", dont_inherit=True), {"__name__": "__main__"})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == "['chain_graph.flujo_inputs', 'chain_graph.report', 'chain_graph.flujo_context']"


def test_the_docs_cache_policy_example_runs_as_written(instance: DagsterInstance) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_doc_block("cache.md", "## Configuring it"), "docs/cache.md", "exec", dont_inherit=True), namespace)
    runtime = AgentRuntime(model=TestModel())
    runs = [
        run_pipeline(namespace["digest"], {"topic": "cats"}, instance=instance, resources={"agent_runtime": runtime})
    ]
    runs.append(
        run_pipeline(namespace["digest"], {"topic": "cats"}, instance=instance, resources={"agent_runtime": runtime})
    )
    made = [{c.step_path: (c.requests, c.cache_hits) for c in run.agent_calls} for run in runs]
    assert made[1] == {"digest > agent:joke": (1, 0), "digest > agent:summary": (0, 1)}  # joke: cache=False
