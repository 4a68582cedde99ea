"""Schedules: a scheduled pipeline gets a `ScheduleDefinition` whose ticks validate the run inputs with the
context model and skip when the pipeline's per-day budget is already spent."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

import pytest
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    build_schedule_context,
)
from pydantic import BaseModel, Field
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
    step,
    validate,
)
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.pricing import USD_NANOS, Limits, Usage

MADRID = ZoneInfo("Europe/Madrid")
TICK = datetime(2026, 11, 26, 6, 0, tzinfo=MADRID)
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class Digest(BaseModel):
    topic: str
    issue: int = Field(default=1, gt=0)
    on: date | None = None
    title: str | None = None


@step
def title(topic: str, issue: int, on: date | None) -> str:
    return f"#{issue} {topic} ({on})"


def digest(schedule: Schedule, name: str = "digest", budget: Budget | None = None) -> Pipeline:
    return Pipeline(name, context=Digest, steps=[title], schedule=schedule, budget=budget)


def tick(defs: Definitions, name: str, instance: DagsterInstance, when: datetime = TICK) -> list[RunRequest] | str:
    """The run requests of one tick, or its skip message."""
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    data = defs.resolve_schedule_def(name).evaluate_tick(context)
    if data.skip_message is not None:
        return data.skip_message
    return list(data.run_requests or [])


def test_a_scheduled_pipeline_gets_a_schedule_targeting_its_job() -> None:
    schedule = Schedule(cron="0 6 * * *", timezone="Europe/Madrid", inputs={"topic": "agents"})
    defs = build_definitions(pipelines=[digest(schedule)])
    found = defs.resolve_schedule_def("digest_schedule")
    assert isinstance(found, ScheduleDefinition)
    assert (found.cron_schedule, found.execution_timezone, found.job_name) == ("0 6 * * *", "Europe/Madrid", "digest")
    assert found.default_status == DefaultScheduleStatus.STOPPED
    running = Schedule(cron="*/5 * * * *", inputs={"topic": "x"}, default_status="running", name="often")
    assert build_definitions(pipelines=[digest(running)]).resolve_schedule_def("often").default_status == (
        DefaultScheduleStatus.RUNNING
    )
    assert not build_definitions(pipelines=[Pipeline("plain", context=Digest, steps=[title])]).schedules


def test_a_tick_requests_a_run_whose_config_carries_the_inputs(instance: DagsterInstance) -> None:
    schedule = Schedule(cron="0 6 * * *", timezone="Europe/Madrid", inputs={"topic": "agents", "issue": 7})
    pipeline = digest(schedule)
    defs = build_definitions(pipelines=[pipeline])
    (request,) = tick(defs, "digest_schedule", instance)
    assert isinstance(request, RunRequest)
    assert request.run_config == {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents", "issue": 7}}}}}
    result = defs.resolve_job_def("digest").execute_in_process(
        run_config={**request.run_config, **QUIET}, instance=instance, tags=request.tags
    )
    assert load_final_context(pipeline, result.run_id, instance=instance) == Digest(
        topic="agents", issue=7, title="#7 agents (None)"
    )


def test_inputs_can_be_a_function_of_the_scheduled_time(instance: DagsterInstance) -> None:
    seen: list[datetime] = []

    def inputs(when: datetime) -> dict[str, object]:
        seen.append(when)
        return {"topic": "agents", "on": when.date()}

    defs = build_definitions(pipelines=[digest(Schedule(cron="0 6 * * *", timezone="Europe/Madrid", inputs=inputs))])
    (request,) = tick(defs, "digest_schedule", instance)
    assert isinstance(request, RunRequest)
    assert request.run_config["ops"]["flujo_inputs"]["config"]["inputs"] == {"topic": "agents", "on": "2026-11-26"}
    assert seen == [TICK] and seen[0].tzinfo is not None


def test_bad_inputs_fail_the_tick_naming_the_pipeline_and_the_field(instance: DagsterInstance) -> None:
    bad = Schedule(cron="0 6 * * *", inputs={"topic": "agents", "issue": 0})
    defs = build_definitions(pipelines=[digest(bad)])
    with pytest.raises(ConfigurationError) as raised:
        tick(defs, "digest_schedule", instance)
    assert str(raised.value) == (
        "schedule 'digest_schedule' of pipeline 'digest': invalid run inputs, no run launched: "
        "issue: Input should be greater than 0 (greater_than; got 0)"
    )
    missing = Schedule(cron="0 6 * * *", inputs=lambda when: {"topc": "typo"})
    defs = build_definitions(pipelines=[digest(missing)])
    with pytest.raises(ConfigurationError) as raised:
        tick(defs, "digest_schedule", instance)
    assert str(raised.value) == (
        "schedule 'digest_schedule' of pipeline 'digest': invalid run inputs, no run launched: "
        "topic: missing (a required input); topc: not an input of this pipeline (got 'typo')"
    )
    odd = Schedule(cron="0 6 * * *", inputs=lambda when: ["topic"])  # type: ignore[arg-type,return-value]
    defs = build_definitions(pipelines=[digest(odd)])
    with pytest.raises(ConfigurationError, match=r"its inputs function returned list, not a mapping of run inputs"):
        tick(defs, "digest_schedule", instance)


class Brief(BaseModel):
    topic: str = "agents"
    brief: str | None = None


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("brief")], usage=RequestUsage(input_tokens=10, output_tokens=100))


def test_a_tick_whose_day_budget_is_spent_is_skipped(instance: DagsterInstance) -> None:
    """The tick checks today in the budget's timezone: the day its run's requests will charge, whatever the
    scheduled time (a late or catch-up tick included)."""
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    pipeline = Pipeline(
        "briefs",
        context=Brief,
        steps=[agent_step("brief", agent=agent, prompt="Brief on {topic}", model_settings={"max_tokens": 200})],
        schedule=Schedule(cron="0 6 * * *", timezone="Europe/Madrid"),
        cache=False,  # every run makes its request, for the day's budget to count it
        budget=Budget(max_cost_usd="0.45", scope="day", timezone="Asia/Tokyo"),
    )
    runtime = AgentRuntime(
        model=FunctionModel(answer, model_name="metered"),
        prices={"function:metered": Price(input_per_mtok=0, output_per_mtok=1_000)},
    )
    defs = build_definitions(pipelines=[pipeline], resources={"agent_runtime": runtime})
    job = defs.resolve_job_def("briefs")
    for _ in range(2):  # two scheduled runs spend $0.20 today (in Tokyo)
        (request,) = tick(defs, "briefs_schedule", instance)
        assert isinstance(request, RunRequest) and not any(t.startswith("flujo/") for t in request.tags)
        assert job.execute_in_process(
            run_config={**request.run_config, **QUIET},
            instance=instance,
            tags={**request.tags, ".dagster/scheduled_execution_time": TICK.isoformat()},
        ).success
    today = datetime.now(ZoneInfo("Asia/Tokyo")).date().isoformat()
    scope = f"pipeline:briefs:day:{today}"
    ledger = InstanceLedger().for_instance(instance)
    assert ledger.totals(scope).spent_usd_nanos == USD_NANOS // 5
    assert ledger.totals("pipeline:briefs:day:2026-11-26").spent_usd_nanos == 0  # not the scheduled time's day
    assert [e.dimensions for e in ledger.entries(scope=scope)] == [{"scheduled_day": "2026-11-26"}] * 2
    assert isinstance(tick(defs, "briefs_schedule", instance)[0], RunRequest)  # $0.25 left: not spent yet
    held = ledger.reserve(scope, Limits(), Usage(usd_nanos=USD_NANOS // 4, tokens=0), run_id="r", step="s")
    ledger.reconcile(held, Usage(usd_nanos=USD_NANOS // 4, tokens=0))
    spent = f"the per-day budget of pipeline 'briefs' for {today} is spent ($0.45 of $0.45); no run launched"
    assert tick(defs, "briefs_schedule", instance) == spent
    # a tick for another scheduled day still checks today, the day its run would charge
    assert tick(defs, "briefs_schedule", instance, datetime(2026, 11, 27, 6, tzinfo=MADRID)) == spent


class Daily(BaseModel):
    day: date
    lang: Literal["en", "es"] = "en"
    title: str | None = None


@step(name="title")
def daily_title(day: date, lang: str) -> str:
    return f"{lang} {day}"


def test_a_daily_partitioned_schedule_runs_the_last_complete_day(instance: DagsterInstance) -> None:
    pipeline = Pipeline(
        "daily",
        context=Daily,
        steps=[daily_title],
        partitions=DailyPartitions(start="2026-11-01", timezone="Europe/Madrid", input_key="day"),
        schedule=Schedule(cron="0 6 * * *", timezone="Europe/Madrid", inputs={"lang": "es"}),
    )
    defs = build_definitions(pipelines=[pipeline])
    (request,) = tick(defs, "daily_schedule", instance)
    assert isinstance(request, RunRequest)
    assert request.partition_key == "2026-11-25"
    assert request.run_config == {"ops": {"flujo_inputs": {"config": {"inputs": {"lang": "es"}}}}}
    result = defs.resolve_job_def("daily").execute_in_process(
        run_config={**request.run_config, **QUIET}, instance=instance, partition_key=request.partition_key
    )
    assert load_final_context(pipeline, result.run_id, instance=instance) == Daily(
        day=date(2026, 11, 25), lang="es", title="es 2026-11-25"
    )
    early = datetime(2026, 11, 1, 6, tzinfo=MADRID)
    assert tick(defs, "daily_schedule", instance, early) == (
        "pipeline 'daily' has no complete daily partition yet at 2026-11-01 06:00:00+01:00"
    )


def test_a_statically_partitioned_schedule_runs_every_partition(instance: DagsterInstance) -> None:
    pipeline = Pipeline(
        "langs",
        context=Daily,
        steps=[daily_title],
        partitions=StaticPartitions(keys=["en", "es"], input_key="lang"),
        schedule=Schedule(cron="0 6 * * *", inputs=lambda when: {"day": when.date()}),
    )
    requests = tick(build_definitions(pipelines=[pipeline]), "langs_schedule", instance)
    assert [(r.partition_key, r.run_key) for r in requests if isinstance(r, RunRequest)] == [
        ("en", "en"),
        ("es", "es"),
    ]


def test_schedule_rules_when_the_definitions_load() -> None:
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[digest(Schedule(cron="0 6 * * *", inputs={"isue": 2}))])
    assert str(raised.value) == (
        "flujo_dagster found 2 error(s) in the pipeline definitions:\n"
        "  [SCHED-001] error at digest > schedule: the schedule gives no value for required run input(s) "
        "['topic']. Hint: add them to Schedule(inputs={...}), pass a function of the scheduled time, or give the "
        "context fields defaults\n"
        "  [SCHED-002] error at digest > schedule: the schedule's inputs name ['isue'], which are not run inputs "
        "of Digest. Hint: a run takes the context fields no step writes; remove these keys or fix their spelling"
    )
    # the partition key is no input a schedule must give; a function's inputs are checked at each tick
    partitioned = Pipeline(
        "daily",
        context=Daily,
        steps=[daily_title],
        partitions=DailyPartitions(start="2026-11-01", input_key="day"),
        schedule=Schedule(cron="0 6 * * *"),
    )
    (finding,) = validate(
        Pipeline(
            "daily",
            context=Daily,
            steps=[daily_title],
            partitions=DailyPartitions(start="2026-11-01", input_key="day"),
            schedule=Schedule(cron="0 6 * * *", inputs={"day": "2026-11-02"}),
        )
    ).errors
    assert (finding.code, finding.path, finding.message) == (
        "SCHED-002",
        "daily > schedule",
        "the schedule's inputs give the partition key field 'day', which each run's partition fills.",
    )
    later = digest(Schedule(cron="0 6 * * *", inputs=lambda when: {}))
    assert len(list(build_definitions(pipelines=[partitioned, later]).schedules or [])) == 2


def test_schedule_dsl_checks_its_arguments() -> None:
    with pytest.raises(ConfigurationError, match=r"^Schedule cron must be a cron string like '0 6 \* \* \*'"):
        Schedule(cron=6)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^Schedule timezone must be an IANA timezone name"):
        Schedule(cron="0 6 * * *", timezone=None)  # type: ignore[arg-type]
    # what Dagster would refuse is a finding of the pipeline (tests/test_validation_dagster.py)
    nowhere = digest(Schedule(cron="daily", timezone="Europe/Nowhere", inputs={"topic": "agents"}))
    assert [(f.code, f.path) for f in validate(nowhere).findings] == [
        ("SCHED-003", "digest > schedule"),
        ("SCHED-004", "digest > schedule"),
    ]
    with pytest.raises(ConfigurationError, match=r"^Schedule default_status must be 'stopped' or 'running'"):
        Schedule(cron="0 6 * * *", default_status="paused")  # type: ignore[arg-type]
