"""Partitioned pipelines: the partition key is a typed context input, the job and the assets are partitioned
the same way, a backfill stores each partition's values apart, and each run charges the day it spends on."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DailyPartitionsDefinition,
    Definitions,
    StaticPartitionsDefinition,
    build_schedule_context,
)
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import (
    AgentRuntime,
    Budget,
    ConfigurationError,
    DailyPartitions,
    Pipeline,
    Price,
    Schedule,
    StaticPartitions,
    agent_step,
    build_definitions,
    load_final_context,
    run_pipeline,
    step,
    validate,
)
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.pricing import USD_NANOS, Limits, Usage

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class Daily(BaseModel):
    day: date
    topic: str = "agents"
    headline: str | None = None
    summary: str | None = None


@step
def headline(day: date, topic: str) -> str:
    return f"{topic} on {day.isoformat()}"


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("summary")], usage=RequestUsage(input_tokens=10, output_tokens=100))


RUNTIME = AgentRuntime(
    model=FunctionModel(answer, model_name="metered"),
    prices={"function:metered": Price(input_per_mtok=0, output_per_mtok=1_000)},  # $0.001 per output token
)


def daily(budget: Budget | None = None, schedule: Schedule | None = None) -> Pipeline:
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    # cache=False: each partition's run makes its request, for the day's budget to count it
    summary = agent_step(
        "summary", agent=agent, prompt="Summarise {headline}", model_settings={"max_tokens": 200}, cache=False
    )
    return Pipeline(
        "daily_digest",
        context=Daily,
        steps=headline >> summary,
        assets=["headline", "summary"],
        partitions=DailyPartitions(start="2026-11-01", timezone="Europe/Madrid", input_key="day"),
        budget=budget or Budget(max_cost_usd="1", scope="day"),
        schedule=schedule,
    )


def failure_message(instance: DagsterInstance, run_id: str) -> str:
    (event,) = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    error = event.dagster_event.step_failure_data.error  # type: ignore[union-attr]
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def test_daily_partitions_partition_the_job_and_the_assets() -> None:
    defs = build_definitions(pipelines=[daily()], resources={"agent_runtime": RUNTIME})
    job = defs.resolve_job_def("daily_digest")
    expected = DailyPartitionsDefinition(start_date="2026-11-01", timezone="Europe/Madrid")
    assert job.partitions_def == expected
    graph = defs.resolve_asset_graph()
    nodes = {node.key: node.partitions_def for node in graph.asset_nodes}
    assert AssetKey(["daily_digest", "headline"]) in nodes and AssetKey(["daily_digest", "summary"]) in nodes
    assert len(nodes) == 2 and set(nodes.values()) == {expected}  # the final context is not an asset


def test_a_backfill_stores_each_partition_apart_and_charges_each_day(instance: DagsterInstance) -> None:
    pipeline = daily()
    defs = build_definitions(pipelines=[pipeline], resources={"agent_runtime": RUNTIME})
    job = defs.resolve_job_def("daily_digest")
    runs = {}
    for day in DAYS:  # a backfill: one run per partition
        result = job.execute_in_process(partition_key=day, instance=instance, run_config=QUIET)
        assert result.success
        assert instance.get_run_by_id(result.run_id).tags["dagster/partition"] == day  # type: ignore[union-attr]
        runs[day] = result.run_id
    for day, run_id in runs.items():
        final = load_final_context(pipeline, run_id, instance=instance)
        assert final == Daily(day=date.fromisoformat(day), headline=f"agents on {day}", summary="summary")
        stored = defs.load_asset_value(AssetKey(["daily_digest", "headline"]), partition_key=day, instance=instance)
        assert stored == f"agents on {day}"
    ledger = InstanceLedger().for_instance(instance)
    # a partition's day is a dimension, not the scope: every run charges the day it spends on (UTC here)
    today = datetime.now(UTC).date().isoformat()
    totals = ledger.totals(f"pipeline:daily_digest:day:{today}")
    assert (totals.spent_usd_nanos, totals.spent_tokens) == (len(DAYS) * USD_NANOS // 10, len(DAYS) * 110)
    assert {e.scope for e in ledger.entries()} == {f"pipeline:daily_digest:day:{today}"}
    for day, run_id in runs.items():  # each entry records its partition, to report the spend by
        assert [e.dimensions for e in ledger.entries(run_id=run_id)] == [{"partition": day}]


def test_a_spent_day_fails_every_partition_run_that_day(instance: DagsterInstance) -> None:
    """A backfill cannot spend a day's budget again per partition: each partition's run charges today."""
    pipeline = daily(budget=Budget(max_cost_usd="0.25", scope="day"))
    defs = build_definitions(pipelines=[pipeline], resources={"agent_runtime": RUNTIME})
    job = defs.resolve_job_def("daily_digest")
    assert job.execute_in_process(partition_key=DAYS[0], instance=instance, run_config=QUIET).success
    today = datetime.now(UTC).date().isoformat()
    for day in DAYS[:2]:
        again = job.execute_in_process(partition_key=day, instance=instance, run_config=QUIET, raise_on_error=False)
        assert not again.success  # $0.10 spent + $0.20 worst case > $0.25
        assert f"pipeline:daily_digest:day:{today}" in failure_message(instance, again.run_id)


class Localised(BaseModel):
    lang: Literal["en", "es"]
    greeting: str | None = None


@step
def greeting(lang: str) -> str:
    return {"en": "hello", "es": "hola"}[lang]


def test_static_partitions_fill_a_typed_key_of_a_plain_job(instance: DagsterInstance) -> None:
    pipeline = Pipeline(
        "hello", context=Localised, steps=[greeting], partitions=StaticPartitions(keys=["en", "es"], input_key="lang")
    )
    job = build_definitions(pipelines=[pipeline]).resolve_job_def("hello")
    assert job.partitions_def == StaticPartitionsDefinition(["en", "es"])
    for lang, word in (("en", "hello"), ("es", "hola")):
        result = job.execute_in_process(partition_key=lang, instance=instance, run_config=QUIET)
        assert load_final_context(pipeline, result.run_id, instance=instance) == Localised(lang=lang, greeting=word)


def test_a_partitioned_run_needs_a_partition_key_that_its_inputs_agree_with(instance: DagsterInstance) -> None:
    pipeline = Pipeline(
        "hello", context=Localised, steps=[greeting], partitions=StaticPartitions(keys=["en", "es"], input_key="lang")
    )
    job = build_definitions(pipelines=[pipeline]).resolve_job_def("hello")
    missing = job.execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
    assert failure_message(instance, missing.run_id) == (
        "flujo_dagster.errors.ConfigurationError: pipeline 'hello' is partitioned: launch its runs for a partition "
        "(a backfill, the UI's partition picker, or execute_in_process/materialize with partition_key=...)"
    )
    config = {**QUIET, "ops": {"flujo_inputs": {"config": {"inputs": {"lang": "es"}}}}}
    clash = job.execute_in_process(partition_key="en", instance=instance, run_config=config, raise_on_error=False)
    assert failure_message(instance, clash.run_id) == (
        "flujo_dagster.errors.ConfigurationError: pipeline 'hello': input 'lang'='es' contradicts the run's "
        "partition key 'en'; leave 'lang' out of the inputs (the partition key fills it)"
    )


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        (
            StaticPartitions(keys=["en"], input_key="language"),
            "StaticPartitions input_key 'language' is not a field of Localised.",
        ),
        (StaticPartitions(keys=["en"], input_key="greeting"), "partition key field 'greeting' is written by a step"),
        (StaticPartitions(keys=["fr"], input_key="lang"), "field 'lang' rejects partition key 'fr': Input should be"),
        (  # every key is checked, not only the first
            StaticPartitions(keys=["en", "fr"], input_key="lang"),
            "field 'lang' rejects partition key 'fr': Input should be",
        ),
    ],
)
def test_partition_rules_when_the_definitions_load(partitions: StaticPartitions, message: str) -> None:
    pipeline = Pipeline("hello", context=Localised, steps=[greeting], partitions=partitions)
    (finding,) = validate(pipeline).errors
    assert (finding.code, finding.path) == ("PART-001", "hello > partitions")
    assert finding.message.startswith(message)
    with pytest.raises(ConfigurationError, match=r"\[PART-001\] error at hello > partitions"):
        build_definitions(pipelines=[pipeline])


def test_partition_dsl_objects_check_their_arguments() -> None:
    with pytest.raises(ConfigurationError, match=r"^DailyPartitions start must be a date or 'YYYY-MM-DD'"):
        DailyPartitions(start="November")
    with pytest.raises(ConfigurationError, match=r"^DailyPartitions end 2026-10-01 must be after start 2026-11-01$"):
        DailyPartitions(start="2026-11-01", end="2026-10-01")
    with pytest.raises(ConfigurationError, match=r"^DailyPartitions timezone must be an IANA timezone name"):
        DailyPartitions(start="2026-11-01", timezone=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^StaticPartitions keys must be unique"):
        StaticPartitions(keys=["en", "en"])
    assert DailyPartitions(start=date(2026, 11, 1)).start == date(2026, 11, 1)
    pipeline = daily(schedule=Schedule(cron="0 6 * * *"))
    longer = pipeline >> [greeting]
    assert (longer.partitions, longer.schedule) == (pipeline.partitions, pipeline.schedule)


def test_partitioned_definitions_load() -> None:
    defs = build_definitions(pipelines=[daily()], resources={"agent_runtime": RUNTIME})
    Definitions.validate_loadable(defs)


def test_run_pipeline_runs_one_partition(instance: DagsterInstance) -> None:
    pipeline = Pipeline(
        "hello", context=Localised, steps=[greeting], partitions=StaticPartitions(keys=["en", "es"], input_key="lang")
    )
    run = run_pipeline(pipeline, partition_key="es", instance=instance, log_level="CRITICAL")
    assert run.raise_for_failure() == Localised(lang="es", greeting="hola")
    assert instance.get_run_by_id(run.run_id).tags["dagster/partition"] == "es"  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match=r"^pipeline 'hello' is partitioned: pass partition_key=\.\.\.$"):
        run_pipeline(pipeline, instance=instance)
    plain = Pipeline("plain", context=Localised, steps=[greeting])
    with pytest.raises(ConfigurationError, match=r"^pipeline 'plain' is not partitioned: partition_key='es' has no"):
        run_pipeline(plain, {"lang": "es"}, partition_key="es", instance=instance)


def test_a_scheduled_partitioned_asset_pipeline_skips_a_spent_day(instance: DagsterInstance) -> None:
    """The tick runs the last complete day, and checks today's budget (the day its run will charge)."""
    pipeline = daily(schedule=Schedule(cron="0 6 * * *", timezone="Europe/Madrid"))
    defs = build_definitions(pipelines=[pipeline], resources={"agent_runtime": RUNTIME})
    schedule = defs.resolve_schedule_def("daily_digest_schedule")
    when = datetime(2026, 11, 3, 6, tzinfo=ZoneInfo("Europe/Madrid"))
    context = build_schedule_context(instance, scheduled_execution_time=when, repository_def=defs.get_repository_def())
    (request,) = schedule.evaluate_tick(context).run_requests or []
    assert (request.partition_key, request.tags["dagster/partition"]) == ("2026-11-02", "2026-11-02")
    ledger = InstanceLedger().for_instance(instance)
    held = ledger.reserve("pipeline:daily_digest:day:2026-11-02", Limits(), Usage(USD_NANOS, 0), run_id="r", step="s")
    ledger.reconcile(held, Usage(USD_NANOS, 0))
    assert schedule.evaluate_tick(context).run_requests  # the partition's day is not the scope
    today = datetime.now(UTC).date().isoformat()
    held = ledger.reserve(f"pipeline:daily_digest:day:{today}", Limits(), Usage(USD_NANOS, 0), run_id="r", step="s")
    ledger.reconcile(held, Usage(USD_NANOS, 0))
    assert schedule.evaluate_tick(context).skip_message == (
        f"the per-day budget of pipeline 'daily_digest' for {today} is spent ($1.00 of $1.00); no run launched"
    )
