"""A park is not a failure: the parked run ends SUCCESS, fires no run-failure sensor, every join after the parked
gate holds instead of running with its values missing, the resume re-executes exactly the parked and held steps
and what they skipped, and `flujo-dagster run` on a pipeline that parks exits 3 with the request printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    RunFailureSensorContext,
    build_sensor_context,
    job,
    op,
    reconstructable,
    run_failure_sensor,
)

from flujo_dagster.adapter.control.approvals import decide, parked_runs, pending, resume
from flujo_dagster.adapter.control.resume_steps import resume_step_keys
from flujo_dagster.runtime.approvals import payload_hash
from tests.approval_defs import REQUEST_LOG, gated_job, looped_job
from tests.test_approvals import park, started
from tests.test_cli import run as run_cli


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    yield log


@op
def boom() -> None:
    raise ValueError("boom")


@job
def failing() -> None:
    boom()


def test_a_park_fires_no_run_failure_sensor(instance: DagsterInstance, requests: Path) -> None:
    fired: list[str] = []

    @run_failure_sensor(name="alerts", monitor_all_code_locations=True)
    def alerts(context: RunFailureSensorContext) -> None:
        fired.append(context.dagster_run.run_id)

    defs = Definitions(jobs=[failing], sensors=[alerts])
    first = alerts.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))  # starts its cursor
    parked = park(gated_job, instance)
    failed = failing.execute_in_process(instance=instance, raise_on_error=False).run_id
    alerts.evaluate_tick(build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor))
    assert fired == [failed]  # the sensor fires for a failure, not for the park
    assert instance.get_run_by_id(parked).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert not instance.all_logs(parked, of_type=DagsterEventType.RUN_FAILURE)
    assert not instance.all_logs(parked, of_type=DagsterEventType.STEP_FAILURE)


def outputs(instance: DagsterInstance, run_id: str) -> set[str]:
    return {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT) if e.step_key}


def held(instance: DagsterInstance, run_id: str) -> set[str]:
    events = instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)
    return {
        e.step_key
        for e in events
        if e.step_key and e.dagster_event and "held, and the steps after it skipped" in (e.dagster_event.message or "")
    }


def test_the_joins_after_a_parked_gate_hold_and_the_resume_runs_exactly_them(
    instance: DagsterInstance, requests: Path
) -> None:
    """A gate in a branch arm in iteration 2 of a loop parks: the branch's join, the loop's join and the final
    context would run (a fan-in runs when any source produced) with the gate's values missing; each holds."""
    parked = park(looped_job, instance)
    joins = {"refine__i2__check__flujo_join", "refine__flujo_join", "flujo_context"}
    assert held(instance, parked) == joins
    assert not joins & outputs(instance, parked)  # none of them produced anything
    assert "publish" not in started(instance, parked)
    run = instance.get_run_by_id(parked)
    assert run is not None
    assert resume_step_keys(instance, run) == [
        "flujo_context",
        "refine__flujo_join",
        "refine__i2__check__flujo_join",
        "refine__i2__check__sign_off",
        "publish",
        "refine__i2__flujo_until",
        "refine__i3__check",
        "refine__i3__check__sign_off",
        "refine__i3__tick",
        "refine__i3__check__flujo_join",
        "refine__i3__flujo_until",
    ]
    decide(parked, verdict="approve", by="ana", instance=instance)
    resumed = resume(parked, job=reconstructable(looped_job), instance=instance)
    assert set(started(instance, resumed)) == {
        "refine__i2__check__sign_off",
        "refine__i2__check__flujo_join",
        "refine__i2__flujo_until",
        "refine__flujo_join",
        "publish",
        "flujo_context",
    }
    assert held(instance, resumed) == set()
    assert parked_runs(instance) == []  # resolved: flujo/parked=false on the parked run


def test_a_run_parked_the_old_way_is_still_listed_and_resumes_from_failure(
    instance: DagsterInstance, requests: Path
) -> None:
    """Before parks stopped failing runs, a park failed its run (FAILURE, `flujo/parked=true`): such runs are still
    parked, and have no parked or held step to name, so they resume from failure."""
    result = failing.execute_in_process(instance=instance, raise_on_error=False)
    instance.add_run_tags(result.run_id, {"flujo/parked": "true"})
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    assert [r.run_id for r in parked_runs(instance)] == [result.run_id]
    assert resume_step_keys(instance, run) is None


def test_flujo_dagster_run_on_a_pipeline_that_parks_exits_3_with_the_request(tmp_path: Path, requests: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = run_cli("run", "tests.approval_defs:gated", "--input", "topic=otters", home=home)
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    run_id = lines[0].removeprefix("run id: ")
    with DagsterInstance.from_config(str(home)) as instance:
        (waiting,) = pending(instance=instance)
    state_hash = waiting.state_hash
    assert lines[2:] == [
        f"parked: run {run_id} waits at 1 approval gate(s); nothing failed",
        "",
        "gated > approval:review (gate review)",
        "  waiting for: a decision by anyone",
        "  who may decide: anyone",
        "  deadline: none",
        f"  payload (sha256 {payload_hash({'draft': 'draft about otters'})}):",
        "    draft: draft about otters",
        f"  state (sha256 {state_hash})",
        "  decide with:",
        f"    flujo-dagster approve {run_id} --gate 'review' --by NAME [--comment TEXT]",
        f"    flujo-dagster reject {run_id} --gate 'review' --by NAME --comment TEXT",
        "",
        "it was parked outside a code location, so no sensor resumes it: once decided, run "
        f"`flujo-dagster resume {run_id} tests.approval_defs:gated`",
    ]
    assert lines[1].startswith("agent step ")
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream and "ERROR" not in stream and "Failure" not in stream
    with DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS and run.tags["flujo/parked"] == "true"
    # the printed commands work: decide, then resume as the CLI said
    assert run_cli("approve", run_id, "--gate", "review", "--by", "ana", home=home).returncode == 0
    resumed = run_cli("resume", run_id, "tests.approval_defs:gated", home=home)
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert '"published": "published: draft about otters"' in resumed.stdout
