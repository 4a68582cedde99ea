"""Approval gates: a run parks at a gate (run tags, no worker held), a decision is a run tag bound to the shown
values, and the resume re-executes from failure without running any completed step or model request again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    build_sensor_context,
    execute_job,
    reconstructable,
)
from pydantic import BaseModel

from flujo_dagster import (
    Approval,
    ApprovalError,
    ConfigurationError,
    Loop,
    Map,
    Parallel,
    Pipeline,
    build_definitions,
    load_final_context,
    step,
)
from flujo_dagster.adapter.control.approvals import decide, pending, resume
from flujo_dagster.names import DECISION_PREFIX
from tests.approval_defs import (
    REQUEST_LOG,
    Post,
    Tiny,
    bound,
    by_hand,
    gated,
    gated_job,
    looped,
    looped_job,
    loose,
    loose_job,
)
from tests.fixtures.invalid_pipeline import broken, valid
from tests.test_cli import run as run_cli

INPUTS = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    yield log


def started(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START) if e.step_key]


def park(job_fn: object, instance: DagsterInstance) -> str:
    job = reconstructable(job_fn)
    tags = {"dagster/user": "requester"}
    with execute_job(job, instance=instance, run_config=INPUTS, tags=tags, raise_on_error=False) as first:
        assert first.success  # a park is not a failure
        assert instance.get_run_by_id(first.run_id).tags["flujo/parked"] == "true"  # type: ignore[union-attr]
        return first.run_id


def test_a_run_parks_at_the_gate_and_resumes_after_approval_without_repeating_work(
    instance: DagsterInstance, requests: Path
) -> None:
    parked = park(gated_job, instance)
    run = instance.get_run_by_id(parked)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS  # a park is not a failure
    assert run.tags["flujo/awaiting/review"] == "pending" and run.tags["flujo/parked"] == "true"
    assert "dagster/retry_on_asset_or_op_failure" not in run.tags  # nothing failed: nothing to keep from retrying
    assert "publish" not in started(instance, parked)
    (waiting,) = pending(instance=instance)
    assert (waiting.run_id, waiting.gate, waiting.path) == (parked, "review", "gated > approval:review")
    assert requests.read_text().splitlines() == ["Write about otters"]

    decide(parked, verdict="approve", by="ana", comment="fine", values={"draft": "edited draft"}, instance=instance)
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    assert resume(parked, job=reconstructable(gated_job), instance=instance) == resumed  # exactly once
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    resumed_tags = instance.get_run_by_id(resumed).tags  # type: ignore[union-attr]
    assert resumed_tags["dagster/user"] == "requester"
    assert "flujo/retry_before_park" not in resumed_tags
    assert instance.get_run_by_id(parked).tags["flujo/parked"] == "false"  # type: ignore[union-attr]  # resolved
    assert set(started(instance, resumed)) == {"review", "publish", "flujo_context"}
    assert requests.read_text().splitlines() == ["Write about otters"]  # the model was not asked again
    context = load_final_context(gated, resumed, instance=instance)
    assert context == Post(topic="otters", draft="edited draft", published="published: edited draft")
    assert pending(instance=instance) == []
    assert instance.get_run_by_id(parked).tags["flujo/awaiting/review"] == "resumed"  # type: ignore[union-attr]


def test_a_rejection_fails_the_resumed_run_naming_who_and_why(instance: DagsterInstance, requests: Path) -> None:
    parked = park(gated_job, instance)
    decide(parked, verdict="reject", by="bo", comment="off topic", instance=instance)
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    (failure,) = instance.all_logs(resumed, of_type=DagsterEventType.STEP_FAILURE)
    data = failure.dagster_event.step_failure_data  # type: ignore[union-attr]
    assert data.user_failure_data.metadata["flujo/error_class"].value == "ApprovalRejectedError"
    assert "gated > approval:review: rejected by bo at " in data.error.message
    assert data.error.message.rstrip().endswith(": off topic")
    assert "publish" not in started(instance, resumed)


def test_decisions_that_do_not_count_leave_the_run_parked(instance: DagsterInstance, requests: Path) -> None:
    parked = park(gated_job, instance)
    forged = '{"verdict":"approve","by":"eve","payload_hash":"0000","values":{}}'
    instance.add_run_tags(parked, {DECISION_PREFIX + "review": forged})
    with pytest.raises(ApprovalError, match=f"run {parked} has no decision for the gates it is parked at"):
        resume(parked, job=reconstructable(gated_job), instance=instance)  # made for other content
    # bound to the right content, but its edit does not validate: the gate ignores it, logs why, parks again
    decide(parked, verdict="approve", by="ana", values={"draft": 123}, instance=instance)
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    run = instance.get_run_by_id(resumed)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    assert run.tags.get("flujo/awaiting/review") == "pending" and run.tags["flujo/parked"] == "true"
    warnings = [e.user_message for e in instance.all_logs(resumed) if "ignored the decision" in e.user_message]
    assert any("flujo/decision/review/ana: its edited values do not validate" in w for w in warnings)
    assert resume(parked, job=reconstructable(gated_job), instance=instance) == resumed  # no second resume
    assert [p.run_id for p in pending(instance=instance)] == [resumed]


def test_a_gate_in_a_branch_inside_a_loop_pauses_and_resumes(instance: DagsterInstance, requests: Path) -> None:
    """Flujo's lost case: its nested gate was skipped on resume and lost data."""
    parked = park(looped_job, instance)
    (waiting,) = pending(instance=instance)
    assert waiting.gate == "refine__i2__check__sign_off"
    assert waiting.path == "looped > loop:refine > i2 > branch:check > approval:sign_off"
    decide(parked, verdict="approve", by="ana", instance=instance)
    resumed = resume(parked, job=reconstructable(looped_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    assert "write" not in started(instance, resumed) and "refine__i1__tick" not in started(instance, resumed)
    assert requests.read_text().splitlines() == ["Write about otters"]
    context = load_final_context(looped, resumed, instance=instance)
    assert context == Post(
        topic="otters", draft="draft about otters", rounds=2, published="published: draft about otters"
    )


class Small(BaseModel):
    a: int = 0
    xs: list[int] = []
    ys: list[int] = []


@pytest.mark.parametrize(
    ("where", "expected_path", "message"),
    [
        (
            "inline_loop",
            "p > loop:l > approval:g",
            "this approval gate could not pause and resume: p > loop:l runs in one op (inline=True), so resuming "
            "would run the whole op again and repeat its model calls.",
        ),
        (
            "parallel",
            "p > parallel:par > approval:g",
            "this approval gate could not pause and resume: p > parallel:par runs in one op (inline=True, the "
            "default), so resuming would run the whole op again and repeat its model calls.",
        ),
        (
            "map",
            "p > map:m > approval:g",
            "this approval gate could not pause and resume: p > map:m runs in one op (inline=True, the default), "
            "so resuming would run the whole op again and repeat its model calls.",
        ),
        (
            "loop_in_map",
            "p > map:m > loop:l > approval:g",
            "this approval gate could not pause and resume: p > map:m > loop:l runs in one op per element (control "
            "flow inside the body of a map with inline=False is not expanded), so resuming would run the whole op "
            "again and repeat its model calls.",
        ),
    ],
)
def test_gates_where_a_run_could_not_resume_are_refused(where: str, expected_path: str, message: str) -> None:
    gate = Approval("g", show=["a"])
    bump = step(name="bump", output_keys=["a"])(lambda a: a + 1)
    node = {
        "inline_loop": Loop("l", body=[bump, gate], until=lambda a: True, max_iterations=1, inline=True),
        "parallel": Parallel("par", branches={"one": [bump, gate]}),
        "map": Map("m", over="xs", item="a", body=[gate], result="a", into="ys"),
        "loop_in_map": Map(
            "m",
            over="xs",
            item="a",
            body=[Loop("l", body=[gate], until=lambda a: True, max_iterations=1)],
            result="a",
            into="ys",
            inline=False,
        ),
    }[where]
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[Pipeline("p", context=Small, steps=[node])])
    (finding,) = [f for f in raised.value.findings if f.code == "HITL-NESTED-001"]
    assert (finding.path, finding.message) == (expected_path, message)


def test_the_cli_lists_pending_gates_and_records_decisions(
    instance: DagsterInstance, dagster_home: Path, requests: Path
) -> None:
    parked = park(gated_job, instance)
    listed = run_cli("pending", home=dagster_home)
    assert listed.returncode == 0, listed.stderr
    (waiting,) = pending(instance=instance)
    assert listed.stdout.splitlines() == [
        f"{parked}  review  gated > approval:review  payload {waiting.payload_hash[:12]}  waiting for a decision by "
        "anyone",
        "    draft: draft about otters",
        f"    state (sha256 {waiting.state_hash})",
        "    decide with:",
        f"      flujo-dagster approve {parked} --gate 'review' --by NAME [--comment TEXT]",
        f"      flujo-dagster reject {parked} --gate 'review' --by NAME --comment TEXT",
        "1 pending approval(s)",
    ]
    wrong = run_cli("approve", parked, "--gate", "nope", "--by", "ana", home=dagster_home)
    assert wrong.returncode == 2 and f"run {parked} is not parked at gate 'nope'; parked at: review" in wrong.stderr
    approved = run_cli("approve", parked, "--by", "ana", "--set", "draft=short", home=dagster_home)
    assert approved.returncode == 0, approved.stderr
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    context = load_final_context(gated, resumed, instance=instance)
    assert context.published == "published: short"  # type: ignore[attr-defined]


def test_the_decide_job_records_a_decision_from_launchpad_config(instance: DagsterInstance, requests: Path) -> None:
    parked = park(gated_job, instance)
    decide_job = build_definitions(pipelines=[gated]).resolve_job_def("flujo_decide")
    config = {"run_id": parked, "decision": "approve", "by": "ana", "comment": "ok from the Launchpad"}
    result = decide_job.execute_in_process(run_config={"ops": {"flujo_decide": {"config": config}}}, instance=instance)
    assert result.success
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    assert instance.get_run_by_id(resumed).status == DagsterRunStatus.SUCCESS  # type: ignore[union-attr]
    bad = {**config, "run_id": resumed}  # not parked
    failed = decide_job.execute_in_process(
        run_config={"ops": {"flujo_decide": {"config": bad}}}, instance=instance, raise_on_error=False
    )
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    error = str(failure.step_failure_data.error)  # type: ignore[union-attr]
    assert f"ApprovalError: run {resumed} is parked at 0 gates (none)" in error
    plain = build_definitions(pipelines=[Pipeline("plain", context=Small, steps=[])])
    assert "flujo_decide" not in {j.name for j in plain.resolve_all_job_defs()}  # only with gates


def test_quarantine_leaves_invalid_pipelines_out_and_a_sensor_reports_them(instance: DagsterInstance) -> None:
    defs = build_definitions(pipelines=[valid, broken], on_invalid="quarantine")
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    assert "valid" in jobs and "broken" not in jobs
    sensor = defs.resolve_sensor_def("flujo_validation")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    with pytest.raises(ConfigurationError) as raised:
        sensor(build_sensor_context(instance=instance, definitions=defs))
    message = str(raised.value)
    assert message.startswith("flujo_dagster left 1 invalid pipeline(s) out of this code location (broken)")
    assert "[V-CTX2] error at broken > step:outline: reads unknown key 'topik'" in message
    with pytest.raises(ConfigurationError):
        build_definitions(pipelines=[valid, broken])  # raise stays the default


def test_a_run_re_executed_by_hand_is_not_resumed_again(instance: DagsterInstance, requests: Path) -> None:
    """A user who re-executes from failure in the UI after adding the decision tag by hand resumes it; the
    sensor and `resume` must not launch a second resume."""
    parked = park(gated_job, instance)
    decide(parked, verdict="approve", by="ana", instance=instance)
    decision = instance.get_run_by_id(parked).tags[DECISION_PREFIX + "review/ana"]  # type: ignore[union-attr]
    options = by_hand(instance, parked)
    tags = {DECISION_PREFIX + "review": decision, "dagster/parent_run_id": parked}  # as the UI's re-execution
    with execute_job(reconstructable(gated_job), instance=instance, reexecution_options=options, tags=tags) as again:
        assert again.success
    assert resume(parked, job=reconstructable(gated_job), instance=instance) == again.run_id
    assert [r.run_id for r in instance.get_runs() if r.parent_run_id == parked] == [again.run_id]
    assert instance.get_run_by_id(parked).tags["flujo/parked"] == "false"  # type: ignore[union-attr]
    assert pending(instance=instance) == []


def test_the_requester_may_not_approve_their_own_run(instance: DagsterInstance, requests: Path) -> None:
    parked = park(gated_job, instance)  # launched by "requester"
    with pytest.raises(ApprovalError) as refused:
        decide(parked, verdict="approve", by="requester", instance=instance)
    assert str(refused.value) == (
        f"this decision on gate review of run {parked} would not count: 'requester' launched the run and may not "
        "decide on it (requester_may_approve=False)"
    )
    # written by hand and re-executed from the UI, the gate ignores it and parks again
    (waiting,) = pending(instance=instance)
    own = bound(waiting, verdict="approve", by="requester")
    options = by_hand(instance, parked)
    tags = {DECISION_PREFIX + "review": own.to_tag(), "dagster/user": "requester"}
    with execute_job(reconstructable(gated_job), instance=instance, reexecution_options=options, tags=tags) as again:
        assert again.success  # parked again
    run = instance.get_run_by_id(again.run_id)
    assert run is not None and run.tags["flujo/awaiting/review"] == "pending"
    warnings = [e.user_message for e in instance.all_logs(again.run_id) if "ignored the decision" in e.user_message]
    assert warnings and "'requester' launched the run and may not decide on it" in warnings[0]


def test_an_edit_that_does_not_fit_its_keys_type_is_ignored(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(loose_job), instance=instance, raise_on_error=False) as first:
        assert first.success  # parked: a park is not a failure
    decide(first.run_id, verdict="approve", by="ana", values={"a": "many"}, instance=instance)
    again = resume(first.run_id, job=reconstructable(loose_job), instance=instance)
    assert instance.get_run_by_id(again).tags["flujo/parked"] == "true"  # type: ignore[union-attr]
    warnings = [e.user_message for e in instance.all_logs(again) if "ignored the decision" in e.user_message]
    assert warnings and "its edited value of 'a' is not a valid 'a'" in warnings[0]
    decide(again, verdict="approve", by="ana", values={"a": "7"}, instance=instance)
    done = resume(again, job=reconstructable(loose_job), instance=instance)
    assert load_final_context(loose, done, instance=instance) == Tiny(a=7)  # "7" becomes the int key's 7
