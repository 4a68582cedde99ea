"""Budgets that cannot be overspent: every model request reserves its worst case in a ledger shared by every
task and process before it starts, and is reconciled to its actual cost after it ends."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from click.testing import CliRunner
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    JobDefinition,
    ReexecutionOptions,
    execute_job,
    instance_for_test,
    reconstructable,
)
from dagster._core.execution.api import execute_run
from dagster._core.storage.runs.schema import RunsTable
from pydantic import BaseModel, create_model
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import (
    AgentRuntime,
    Budget,
    ConfigurationError,
    Parallel,
    Pipeline,
    Price,
    agent_step,
    build_definitions,
    run_pipeline,
)
from flujo_dagster.adapter.storage.budgets import MAX_CHAIN, InstanceLedger, adopt_ledger, chain_of
from flujo_dagster.cli import main
from flujo_dagster.errors import UsageLimitExceededError
from flujo_dagster.pricing import USD_NANOS, BudgetLedger, Limits, PostgresBudgetLedger, SqliteBudgetLedger, Usage
from flujo_dagster.pricing.prices import PriceBook
from flujo_dagster.runtime.budget import BudgetContext, Guard
from flujo_dagster.validation import validate
from tests import budget_defs
from tests.ledger_workers import Backend

BRANCHES, MAX_TOKENS = 16, 2_000
PRICE = Price(input_per_mtok=0, output_per_mtok=1_000)
"""$0.001 per output token, input free: a request's worst case is exactly MAX_TOKENS x $0.001 = $2."""
OUTPUTS = [MAX_TOKENS - 7 * i * i for i in range(BRANCHES)]
"""Varied usage, some near max_tokens."""


def prompt_of(messages: list[ModelMessage]) -> str:
    return next(p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))  # type: ignore[misc]


def metered(calls: list[int], *, over: int = 0) -> FunctionModel:
    """Answers `branch i` with OUTPUTS[i] (+ `over`) output tokens, after a short wait (so that every branch
    reserves before any is reconciled)."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        branch = int(str(prompt_of(messages)).split()[-1])
        calls.append(branch)
        await anyio.sleep(0.05)
        usage = RequestUsage(input_tokens=40, output_tokens=OUTPUTS[branch] + over)
        return ModelResponse(parts=[TextPart(f"answer {branch}")], usage=usage)

    return FunctionModel(answer, model_name="metered")


def fan(budget: Budget, name: str = "fan") -> Pipeline:
    fields: dict[str, object] = {f"a{i}": (str, "") for i in range(BRANCHES)}
    context: type[BaseModel] = create_model("Fan", **fields)  # type: ignore[call-overload]
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    settings = {"max_tokens": MAX_TOKENS}
    branches = {
        f"b{i}": [agent_step(f"ask{i}", agent=agent, prompt=f"branch {i}", output_key=f"a{i}", model_settings=settings)]
        for i in range(BRANCHES)
    }
    return Pipeline(name, context=context, steps=[Parallel("all", branches=branches)], budget=budget)


def runtime(calls: list[int], **options: int) -> AgentRuntime:
    return AgentRuntime(model=metered(calls, **options), prices={"function:metered": PRICE})


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, instance: DagsterInstance) -> Iterator[BudgetLedger]:
    """The instance's default SQLite ledger, or a PostgreSQL one (FLUJO_TEST_POSTGRES_URL; the test fails
    when it is set and the server is unreachable)."""
    if request.param == "sqlite":
        yield InstanceLedger().for_instance(instance)
        return
    url = os.environ.get("FLUJO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set")
    postgres = PostgresBudgetLedger(url)
    yield postgres
    postgres.close()


def test_parallel_branches_never_overspend_a_run_budget(instance: DagsterInstance, ledger: BudgetLedger) -> None:
    calls: list[int] = []
    budget = Budget(max_cost_usd=Decimal("20"))  # ten worst cases
    resources = {"agent_runtime": runtime(calls), "budget_ledger": ledger}
    result = run_pipeline(fan(budget), {}, instance=instance, resources=resources, log_level="CRITICAL")
    assert not result.success
    assert result.error is not None and "UsageLimitExceededError" in result.error, result.error
    # ten requests could reserve their worst case; the other six never reached the model
    assert len(calls) == 10
    entries = ledger.entries(run_id=result.run_id)
    assert sorted(e.state for e in entries) == ["reconciled"] * 10
    assert all(e.actual is not None and e.actual.usd_nanos <= e.reserved.usd_nanos for e in entries)
    totals = ledger.totals(f"run:{result.run_id}")
    spent = sum(e.actual.usd_nanos for e in entries if e.actual is not None)
    assert spent == sum(OUTPUTS[b] for b in calls) * USD_NANOS // 1000
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos, totals.overshoots) == (spent, 0, 0)
    assert spent <= 20 * USD_NANOS


def test_budget_rules_when_the_definitions_load() -> None:
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    fields: dict[str, object] = {"a": (str, "")}
    context: type[BaseModel] = create_model("One", **fields)  # type: ignore[call-overload]
    unbounded = Pipeline(
        "one", context=context, steps=[agent_step("a", agent=agent, prompt="hi")], budget=Budget(max_tokens=9)
    )
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[unbounded])
    assert str(raised.value).splitlines()[1] == (
        "  [BUDGET-001] error at one > agent:a: a budget applies to this agent step, but it sets no max_tokens, so "
        "no request has a worst case to reserve. Hint: pass model_settings={'max_tokens': N} to agent_step (or set "
        "it on the agent)"
    )
    small = Budget(max_cost_usd=Decimal("0.001"))
    step = agent_step("a", agent=agent, prompt="hi", model_settings={"max_tokens": 1_000}, budget=small)
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[Pipeline("one", context=context, steps=[step])])
    assert str(raised.value).splitlines()[1] == (
        "  [BUDGET-002] error at one > agent:a: no request of this step can ever fit the run budget: "
        "max_tokens=1000 output tokens alone cost $0.002 on openai:gpt-5-mini, more than the budget's "
        "max_cost_usd=$0.001. Hint: raise the budget or lower max_tokens"
    )


def test_a_response_over_its_reservation_is_an_overshoot_that_stops_the_scope(
    instance: DagsterInstance, ledger: BudgetLedger
) -> None:
    calls: list[int] = []
    day = Budget(max_cost_usd=Decimal("1000"), scope="day")
    name = f"over_{uuid.uuid4().hex[:8]}"  # a fresh per-day scope
    resources = {"agent_runtime": runtime(calls, over=MAX_TOKENS), "budget_ledger": ledger}
    first = run_pipeline(fan(day, name), {}, instance=instance, resources=resources, log_level="CRITICAL")
    assert not first.success
    assert first.error is not None and "recorded as an overshoot" in first.error
    (scope,) = {e.scope for e in ledger.entries(run_id=first.run_id)}
    assert scope.startswith(f"pipeline:{name}:day:")
    totals = ledger.totals(scope)
    assert totals.halted and totals.overshoots >= 1 and totals.reserved_usd_nanos == 0
    calls.clear()
    again = run_pipeline(fan(day, name), {}, instance=instance, resources=resources, log_level="CRITICAL")
    assert not again.success and calls == []  # the halted scope lets no request start
    assert again.error is not None and "UsageLimitExceededError" in again.error


def test_the_default_ledger_is_a_sqlite_file_under_the_instance(instance: DagsterInstance) -> None:
    ledger = InstanceLedger().for_instance(instance)
    assert isinstance(ledger, SqliteBudgetLedger)
    assert InstanceLedger().for_instance(instance) is ledger  # one per process and location


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_expanded_branches_in_separate_processes_never_overspend(instance: DagsterInstance, kind: str) -> None:
    """Sixteen step processes (multiprocess executor, `inline=False`) share one $20 budget."""
    if kind == "postgres" and not budget_defs.POSTGRES_URL:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set")
    job = reconstructable(budget_defs.sqlite_job if kind == "sqlite" else budget_defs.postgres_job)
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    with execute_job(job, instance=instance, run_config=quiet, raise_on_error=False) as result:
        run_id = result.run_id
    ledger: BudgetLedger = (
        InstanceLedger().for_instance(instance) if kind == "sqlite" else PostgresBudgetLedger(budget_defs.POSTGRES_URL)
    )
    entries = ledger.entries(run_id=run_id)
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    refused = [f for f in failures if "UsageLimitExceededError" in str(f.dagster_event.step_failure_data)]  # type: ignore[union-attr]
    # every step either reserved (and was reconciled) or was refused before its request started
    assert len(entries) + len(refused) == budget_defs.BRANCHES, (len(entries), len(failures))
    assert refused and len(failures) == len(refused)
    assert all(e.state == "reconciled" for e in entries)
    spent = sum(e.actual.usd_nanos for e in entries if e.actual is not None)
    assert spent <= budget_defs.BUDGET_USD * USD_NANOS
    totals = ledger.totals(f"run:{run_id}")
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos) == (spent, 0)


def test_a_reexecution_recovers_what_a_killed_process_left_reserved(instance: DagsterInstance) -> None:
    """The first run fails (its budget refuses some branches); a reservation its killed process would have left
    open is settled, counted at its reserved amount, when the run is re-executed from failure."""
    job = reconstructable(budget_defs.sqlite_job)
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    with execute_job(job, instance=instance, run_config=quiet, raise_on_error=False) as first:
        assert not first.success
        parent = first.run_id
    ledger = InstanceLedger().for_instance(instance)
    scope = f"run:{parent}"
    # what a step process killed between reserve and reconcile leaves behind
    orphan = ledger.reserve(scope, Limits(), Usage(usd_nanos=7, tokens=3), run_id=parent, step="killed")
    before = ledger.totals(scope)
    assert before.reserved_usd_nanos == 7
    options = ReexecutionOptions.from_failure(parent, instance)
    with execute_job(job, instance=instance, reexecution_options=options, run_config=quiet, raise_on_error=False):
        pass
    (entry,) = [e for e in ledger.entries(run_id=parent) if e.id == orphan.id]
    assert entry.state == "recovered" and entry.actual == Usage(usd_nanos=7, tokens=3)
    after = ledger.totals(scope)
    assert after.reserved_usd_nanos == 0
    entries = ledger.entries(scope=scope)
    assert after.spent_usd_nanos == sum(e.actual.usd_nanos for e in entries if e.actual is not None)
    assert ledger.recover(parent) == 0  # never counted twice


def backdated(instance: DagsterInstance, job: JobDefinition, day: datetime) -> str:
    """A finished run of `job` recorded as created on `day` (what a run of that day looks like)."""
    run = instance.create_run_for_job(job, status=DagsterRunStatus.SUCCESS)
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(RunsTable.update().where(RunsTable.c.run_id == run.run_id).values(create_timestamp=day))
    return run.run_id


def launch(instance: DagsterInstance, tags: dict[str, str], parent: str | None = None) -> str:
    """Create and execute a run of `budget_defs.day_job` with `tags` and, like any GraphQL client may, a named
    parent and root run; its run id."""
    job = budget_defs.day_job()
    run = instance.create_run_for_job(job, tags=tags, parent_run_id=parent, root_run_id=parent)
    execute_run(reconstructable(budget_defs.day_job), run, instance)
    return run.run_id


def test_a_per_day_budget_holds_against_every_tag(instance: DagsterInstance) -> None:
    """With today's budget spent, no tag, partition, schedule time or named root run moves a run to another day:
    every request charges the day on which it is reserved, in the budget's timezone."""
    zone = ZoneInfo(budget_defs.DAY_ZONE)
    ledger = InstanceLedger().for_instance(instance)
    unreadable = {"dagster/partition": "eu", ".dagster/scheduled_execution_time": "not a time"}
    first = launch(instance, unreadable)
    today = datetime.now(zone).date().isoformat()
    (entry,) = ledger.entries(run_id=first)
    assert entry.scope == f"pipeline:capped:day:{today}" and entry.state == "reconciled"
    assert entry.dimensions == {}  # no partitions, and a scheduled time that does not parse: no dimension
    assert instance.get_run_by_id(first).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    spent = ledger.totals(entry.scope).spent_usd_nanos
    rest = ledger.reserve(entry.scope, Limits(), Usage(USD_NANOS - spent, 0), run_id="elsewhere", step="s")
    ledger.reconcile(rest, Usage(USD_NANOS - spent, 0))  # today's $1 is spent
    old = backdated(instance, budget_defs.day_job(), datetime(2001, 1, 1, 12, tzinfo=UTC))
    escapes = [
        ({"flujo/budget_day": "2001-01-01"}, None),
        ({"dagster/partition": "2001-01-01"}, None),  # the job is not partitioned
        ({".dagster/scheduled_execution_time": "2001-01-01T06:00:00+00:00"}, None),
        ({}, old),  # a parent and root run created on another day
    ]
    for tags, parent in escapes:
        budget_defs.DAY_CALLS.clear()
        run_id = launch(instance, tags, parent)
        assert budget_defs.DAY_CALLS == [], (tags, parent)
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        (failure,) = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
        assert "UsageLimitExceededError" in str(failure.dagster_event.step_failure_data), tags  # type: ignore[union-attr]
        assert ledger.entries(run_id=run_id) == []
    assert {e.scope for e in ledger.entries()} == {f"pipeline:capped:day:{today}"}


def test_a_run_budget_is_shared_only_along_the_parent_chain_the_instance_proves(instance: DagsterInstance) -> None:
    """A client may name any parent and root run: the named root is ignored, and a parent that is not a run of
    the same job in the instance ends the chain."""
    job = budget_defs.day_job()
    other = build_definitions(pipelines=[fan(Budget(max_tokens=10**9))]).resolve_job_def("fan")
    done = DagsterRunStatus.FAILURE
    first = instance.create_run_for_job(job, status=done)
    second = instance.create_run_for_job(job, parent_run_id=first.run_id, root_run_id=first.run_id, status=done)
    third = instance.create_run_for_job(job, parent_run_id=second.run_id, root_run_id="made-up")
    assert [r.run_id for r in chain_of(third, instance)] == [third.run_id, second.run_id, first.run_id]
    unknown = instance.create_run_for_job(job, parent_run_id="no-such-run", root_run_id=first.run_id)
    assert [r.run_id for r in chain_of(unknown, instance)] == [unknown.run_id]
    foreign = instance.create_run_for_job(other)
    stranger = instance.create_run_for_job(job, parent_run_id=foreign.run_id, root_run_id=foreign.run_id)
    assert [r.run_id for r in chain_of(stranger, instance)] == [stranger.run_id]


def test_a_run_naming_a_running_parent_neither_recovers_nor_shares_its_budget(instance: DagsterInstance) -> None:
    """A parent still running has reservations in flight, not left behind: a run naming it (any client may) does
    not close them, and charges its own run budget; once the parent has finished, a re-execution joins its chain."""
    ledger = InstanceLedger().for_instance(instance)
    parent = instance.create_run_for_job(budget_defs.run_job(), status=DagsterRunStatus.STARTED)
    scope = f"run:{parent.run_id}"
    in_flight = ledger.reserve(scope, Limits(), Usage(95 * USD_NANOS // 100, 0), run_id=parent.run_id, step="ask")
    job = reconstructable(budget_defs.run_job)
    child = instance.create_run_for_job(budget_defs.run_job(), parent_run_id=parent.run_id, root_run_id=parent.run_id)
    execute_run(job, child, instance)
    assert instance.get_run_by_id(child.run_id).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    (mine,) = ledger.entries(run_id=child.run_id)
    assert mine.scope == f"run:{child.run_id}" and mine.state == "reconciled"
    (theirs,) = ledger.entries(run_id=parent.run_id)
    assert theirs.id == in_flight.id and theirs.state == "reserved"
    assert ledger.totals(scope).reserved_usd_nanos == 95 * USD_NANOS // 100
    instance.report_run_failed(parent)  # now finished: a re-execution settles it and shares its $1 (0.95 spent)
    later = instance.create_run_for_job(budget_defs.run_job(), parent_run_id=parent.run_id, root_run_id=parent.run_id)
    execute_run(job, later, instance)
    (theirs,) = ledger.entries(run_id=parent.run_id)
    assert theirs.state == "recovered"
    assert instance.get_run_by_id(later.run_id).status == DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    assert ledger.entries(run_id=later.run_id) == []  # refused before any request: $0.95 + $0.20 > $1


def test_the_chain_is_walked_and_recovered_once_per_op_not_per_attempt(instance: DagsterInstance) -> None:
    """Three attempts of one agent step in a re-execution: the ledger is looked up (checked, the chain walked,
    the parent's open reservations recovered) once, by the first attempt."""
    budget_defs.FLAKY_CALLS.clear()
    budget_defs.LEDGER_LOOKUPS.clear()
    ledger = InstanceLedger().for_instance(instance)
    parent = instance.create_run_for_job(budget_defs.flaky_job(), status=DagsterRunStatus.FAILURE)
    left = ledger.reserve(f"run:{parent.run_id}", Limits(), Usage(7, 0), run_id=parent.run_id, step="killed")
    run = instance.create_run_for_job(budget_defs.flaky_job(), parent_run_id=parent.run_id, root_run_id=parent.run_id)
    execute_run(reconstructable(budget_defs.flaky_job), run, instance)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert len(budget_defs.FLAKY_CALLS) == 3 and budget_defs.LEDGER_LOOKUPS == ["looked up"]
    (entry,) = ledger.entries(run_id=parent.run_id)
    assert entry.id == left.id and entry.state == "recovered"
    assert {e.scope for e in ledger.entries(run_id=run.run_id)} == {f"run:{parent.run_id}"}


def test_a_chain_is_cut_after_max_chain_runs(instance: DagsterInstance) -> None:
    """A chain of re-executions longer than MAX_CHAIN is cut there (its walk and recovery stay bounded)."""
    job = budget_defs.day_job()
    run = instance.create_run_for_job(job, status=DagsterRunStatus.FAILURE)
    for _ in range(MAX_CHAIN + 5):
        run = instance.create_run_for_job(
            job, parent_run_id=run.run_id, root_run_id=run.run_id, status=DagsterRunStatus.FAILURE
        )
    assert len(chain_of(run, instance)) == MAX_CHAIN


def test_a_request_cut_off_by_a_timeout_counts_at_its_worst_case(instance: DagsterInstance) -> None:
    """The request may have been sent and billed: a timeout (a cancellation) keeps its reservation as spent."""

    async def slow(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await anyio.sleep(5)
        return ModelResponse(parts=[TextPart("late")])

    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    ask = agent_step(
        "ask",
        agent=agent,
        prompt="hi",
        output_key="a0",
        model_settings={"max_tokens": 100},
        timeout=timedelta(seconds=0.2),
    )
    fields: dict[str, object] = {"a0": (str, "")}
    context: type[BaseModel] = create_model("Slow", **fields)  # type: ignore[call-overload]
    pipeline = Pipeline("slow", context=context, steps=[ask], budget=Budget(max_cost_usd=Decimal("1")))
    runtime = AgentRuntime(model=FunctionModel(slow, model_name="metered"), prices={"function:metered": PRICE})
    result = run_pipeline(pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="CRITICAL")
    assert not result.success and result.error is not None and "StepTimeoutError" in result.error
    (entry,) = InstanceLedger().for_instance(instance).entries(run_id=result.run_id)
    assert entry.state == "reconciled" and entry.actual == entry.reserved
    assert entry.reserved.usd_nanos == 100 * USD_NANOS // 1000  # max_tokens x $0.001 (input is free)


def single(budget: Budget, name: str = "single") -> Pipeline:
    """One budgeted agent step answering `branch 0` (2,000 output tokens: $2)."""
    fields: dict[str, object] = {"a0": (str, "")}
    context: type[BaseModel] = create_model("Single", **fields)  # type: ignore[call-overload]
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    ask = agent_step("ask", agent=agent, prompt="branch 0", output_key="a0", model_settings={"max_tokens": MAX_TOKENS})
    return Pipeline(name, context=context, steps=[ask], budget=budget, cache=False)  # every run requests


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_lost_ledger_is_refused_until_adopted(instance: DagsterInstance, dagster_home: Path, kind: str) -> None:
    """Deleting the ledger's file (or dropping its tables) must not reset the spend to $0 silently: runs refuse
    it, naming the ledger and what to do, until `flujo-dagster ledger adopt` starts the new ledger on purpose."""
    url = os.environ.get("FLUJO_TEST_POSTGRES_URL", "")
    if kind == "postgres" and not url:
        pytest.skip("FLUJO_TEST_POSTGRES_URL is not set")
    prefix = f"flujo_budget_t{uuid.uuid4().hex[:12]}_"
    backend = Backend("postgres", url, prefix=prefix) if kind == "postgres" else None
    ledger = InstanceLedger().for_instance(instance) if backend is None else backend.open()
    calls: list[int] = []
    resources = {"agent_runtime": runtime(calls), "budget_ledger": ledger}
    pipeline = single(Budget(max_cost_usd=Decimal("20"), scope="day"))
    try:
        assert run_pipeline(pipeline, {}, instance=instance, resources=resources, log_level="CRITICAL").success
        assert calls == [0]
        if backend is None:
            ledger.close()
            path = Path(ledger.location)  # type: ignore[attr-defined]
            for leftover in path.parent.glob(f"{path.name}*"):
                leftover.unlink()
        else:
            backend.drop_tables()
        refused = run_pipeline(pipeline, {}, instance=instance, resources=resources, log_level="CRITICAL")
        assert not refused.success and calls == [0]
        assert refused.error is not None and "StorageError" in refused.error
        assert "is not the one this Dagster instance recorded (" in refused.error
        assert "run `flujo-dagster ledger adopt`" in refused.error
        if backend is None:
            env = {"DAGSTER_HOME": str(dagster_home)}
            adopted = CliRunner().invoke(main, ["ledger", "adopt"], env=env, catch_exceptions=False)
            assert adopted.exit_code == 0 and adopted.output.startswith("adopted the budget ledger at ")
        else:
            location, found, before = adopt_ledger(instance, ledger)
            assert location.startswith("PostgreSQL ") and before is not None and found != before
        assert run_pipeline(pipeline, {}, instance=instance, resources=resources, log_level="CRITICAL").success
        assert calls == [0, 0]
    finally:
        if backend is not None:
            ledger.close()
            backend.drop_tables()


def test_a_moved_dagster_home_still_refuses_a_lost_ledger(dagster_home: Path, tmp_path: Path) -> None:
    """The instance records its own ledger's id under one key, not under the ledger's path: after DAGSTER_HOME
    moves, a ledger lost on the way is refused, not recorded as a first use."""
    calls: list[int] = []
    pipeline = single(Budget(max_cost_usd=Decimal("20"), scope="day"))
    resources = {"agent_runtime": runtime(calls)}
    with instance_for_test(temp_dir=str(dagster_home)) as instance:
        assert run_pipeline(pipeline, {}, instance=instance, resources=resources, log_level="CRITICAL").success
        InstanceLedger().for_instance(instance).close()
    moved = tmp_path / "moved_home"
    shutil.copytree(dagster_home, moved)
    for leftover in (moved / "storage" / "flujo").glob("budgets.sqlite*"):
        leftover.unlink()  # the ledger did not make the move
    with instance_for_test(temp_dir=str(moved)) as instance:
        refused = run_pipeline(pipeline, {}, instance=instance, resources=resources, log_level="CRITICAL")
        assert not refused.success and calls == [0]
        assert refused.error is not None and "StorageError" in refused.error and str(moved) in refused.error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_tokens": 1.5}, "Budget max_tokens must be a whole number (int) from 0 to 2**62 - 1, got float 1.5"),
        ({"max_tokens": "100"}, "Budget max_tokens must be a whole number (int) from 0 to 2**62 - 1, got str '100'"),
        ({"max_tokens": True}, "Budget max_tokens must be a whole number (int) from 0 to 2**62 - 1, got bool True"),
        ({"max_tokens": -1}, "Budget max_tokens must be a whole number (int) from 0 to 2**62 - 1, got int -1"),
        ({"max_tokens": 2**62}, "Budget max_tokens must be a whole number (int) from 0 to 2**62 - 1, got int"),
        ({"max_cost_usd": "abc"}, "Budget max_cost_usd must be a number, got 'abc'"),
        ({"max_cost_usd": float("nan")}, "Budget max_cost_usd must be a finite number from 0 to 4611686018.4"),
        ({"max_cost_usd": Decimal("-0.01")}, "Budget max_cost_usd must be a finite number from 0 to"),
        ({"max_cost_usd": Decimal("1e30")}, "Budget max_cost_usd must be a finite number from 0 to"),
        ({"max_cost_usd": True}, "Budget max_cost_usd must be a number of US dollars (Decimal, int, float or a"),
        ({"max_cost_usd": 1, "timezone": 5}, "Budget timezone must be an IANA timezone name such as 'UTC', got 5"),
        ({"max_cost_usd": 1, "max_wait": 5}, "Budget max_wait must be a datetime.timedelta, got 5: write e.g."),
        ({"max_cost_usd": 1, "max_wait": timedelta(seconds=-1)}, "Budget max_wait must be at least 0, got"),
    ],
)
def test_budget_values_are_checked_with_clear_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Budget(**options)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_a_budget_timezone_and_a_budgeted_steps_max_tokens_are_validated() -> None:
    """A bad timezone is BUDGET-003; a max_tokens that is negative, zero, fractional or a string is BUDGET-004
    (a negative one used to pass BUDGET-001 and BUDGET-002); a budget changed after it was made is BUDGET-005."""
    fields: dict[str, object] = {"a": (str, "")}
    context: type[BaseModel] = create_model("One", **fields)  # type: ignore[call-overload]
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    zoned = Pipeline(
        "zoned",
        context=context,
        steps=[agent_step("a", agent=agent, prompt="hi", model_settings={"max_tokens": 10})],
        budget=Budget(max_tokens=100, scope="day", timezone="Mars/Olympus_Mons"),
    )
    (finding,) = validate(zoned).errors
    assert str(finding) == (
        "[BUDGET-003] error at zoned: the budget's timezone 'Mars/Olympus_Mons' is not an IANA timezone name. "
        "Hint: use an IANA timezone name such as 'UTC' or 'Europe/Madrid'"
    )
    for bad in (-5, 0, 1.5, "100"):
        step = agent_step("a", agent=agent, prompt="hi", model_settings={"max_tokens": bad})
        pipeline = Pipeline("one", context=context, steps=[step], budget=Budget(max_cost_usd=Decimal("1")))
        (finding,) = validate(pipeline).errors
        assert (finding.code, finding.path) == ("BUDGET-004", "one > agent:a"), bad
        assert f"its max_tokens is {type(bad).__name__} {bad!r}, not a whole number of tokens" in finding.message
    with pytest.raises(ConfigurationError, match="BUDGET-004"):
        build_definitions(pipelines=[pipeline])
    for field, value in (("max_tokens", -1), ("max_tokens", "100"), ("max_cost_usd", Decimal("NaN"))):
        changed = Budget(max_tokens=100, max_cost_usd=Decimal("1"))
        object.__setattr__(changed, field, value)  # what no constructor lets through
        step = agent_step("a", agent=agent, prompt="hi", model_settings={"max_tokens": 10}, budget=changed)
        (finding,) = validate(Pipeline("one", context=context, steps=[step])).errors
        assert (finding.code, finding.path) == ("BUDGET-005", "one > agent:a"), (field, value)
        assert f"the budget cannot be enforced: its {field} {value!r} is not" in finding.message


@pytest.mark.parametrize(("field", "value"), [("output_tokens", -1), ("input_tokens", 2**63)])
def test_impossible_usage_reported_by_a_model_fails_clearly_and_stays_charged(
    instance: DagsterInstance, field: str, value: int
) -> None:
    """Usage no ledger can count gives an error naming the step path, the model and the value (not the ledger's
    ValueError), and the request's reservation stays charged at its worst case."""

    def lying(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        usage = RequestUsage(**{"input_tokens": 10, "output_tokens": 10, field: value})
        return ModelResponse(parts=[TextPart("answer")], usage=usage)

    model = FunctionModel(lying, model_name="metered")
    resources = {"agent_runtime": AgentRuntime(model=model, prices={"function:metered": PRICE})}
    result = run_pipeline(
        single(Budget(max_cost_usd=Decimal("20"))), {}, instance=instance, resources=resources, log_level="CRITICAL"
    )
    assert not result.success and result.error is not None
    assert f"single > agent:ask: model 'metered' reported {field}={value}" in result.error, result.error
    assert "ValueError" not in result.error and "UsageLimitExceededError" in result.error
    (entry,) = InstanceLedger().for_instance(instance).entries(run_id=result.run_id)
    assert entry.state == "reconciled" and entry.actual == entry.reserved


# --- admission: a request that fits once requests in flight settle waits for them ------------------------------------

CENT = USD_NANOS // 100


def test_a_request_waits_for_requests_in_flight_then_is_admitted_refused_or_cancelled(ledger: BudgetLedger) -> None:
    """Limit 10 cents, 8 in flight: 11 cents is refused at once; 5 cents waits, and gives up its place in the queue
    when cancelled; admitted once the 8 cents settle at 1; refused after `max_wait` when nothing settles."""
    scope, limits = f"team:{uuid.uuid4().hex}", Limits(max_usd_nanos=10 * CENT)
    patient = BudgetContext(
        ledger=ledger, guards=(Guard(scope, limits, max_wait=timedelta(minutes=5)),), run_id="r", prices=PriceBook()
    )
    hasty = BudgetContext(
        ledger=ledger,
        guards=(Guard(scope, limits, max_wait=timedelta(milliseconds=50)),),
        run_id="r",
        prices=PriceBook(),
    )
    flight = ledger.reserve(scope, limits, Usage(8 * CENT, 1), run_id="r", step="flight")

    async def scenario() -> None:
        with pytest.raises(UsageLimitExceededError, match="would be exceeded by run 'r' step 'hopeless'") as hopeless:
            await patient.admit(Usage(11 * CENT, 1), step="hopeless")
        assert "waited" not in str(hopeless.value)
        with anyio.move_on_after(0.1):  # a terminated run cancels the waiting request
            await patient.admit(Usage(5 * CENT, 1), step="cancelled")
        probe = await hasty.admit(Usage(2 * CENT, 1), step="probe")  # no ticket of the cancelled one ahead of it
        ledger.release(probe[0])
        admitted: list[object] = []

        async def wait_for_room() -> None:
            admitted.extend(await patient.admit(Usage(5 * CENT, 1), step="waiter"))

        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_room)
            await anyio.sleep(0.05)
            assert admitted == []  # 8 + 5 > 10: it waits
            ledger.reconcile(flight, Usage(CENT, 1))
        assert len(admitted) == 1
        with pytest.raises(UsageLimitExceededError) as bounded:  # 1 + 5 + 5 > 10, and nothing settles
            await hasty.admit(Usage(5 * CENT, 1), step="late")
        message = str(bounded.value)
        assert "step 'late' waited" in message and "(the Budget's max_wait, 0.05 s)" in message
        assert "raise the Budget's max_wait" in message

    anyio.run(scenario)
    totals = ledger.totals(scope)
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos) == (CENT, 5 * CENT)


def test_parallel_branches_wait_for_each_other_instead_of_failing(
    instance: DagsterInstance, ledger: BudgetLedger
) -> None:
    """Sixteen branches under ten worst cases ($20), each answering a tenth of its worst case: the six that do not
    fit at first wait for earlier ones to settle, and all sixteen run without overspending."""
    calls: list[int] = []

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append(int(str(prompt_of(messages)).split()[-1]))
        await anyio.sleep(0.05)
        return ModelResponse(parts=[TextPart("a")], usage=RequestUsage(input_tokens=40, output_tokens=MAX_TOKENS // 10))

    model = FunctionModel(answer, model_name="metered")
    resources = {
        "agent_runtime": AgentRuntime(model=model, prices={"function:metered": PRICE}),
        "budget_ledger": ledger,
    }
    result = run_pipeline(fan(Budget(max_cost_usd=Decimal("20"))), {}, instance=instance, resources=resources)
    assert result.success, result.error
    assert sorted(calls) == list(range(BRANCHES))
    totals = ledger.totals(f"run:{result.run_id}")
    assert (totals.spent_usd_nanos, totals.reserved_usd_nanos) == (BRANCHES * MAX_TOKENS // 10 * USD_NANOS // 1000, 0)
