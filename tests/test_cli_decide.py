"""Deciding from the command line: short run ids, deciding on a run that was already resumed, what `pending` prints
(the commands to decide, nothing a model wrote reaching the terminal as control characters), and a decision that
launches the resume at once through the webserver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from dagster import DagsterInstance, DagsterRun, RunsFilter, execute_job, reconstructable

from flujo_dagster.adapter.control.approvals import decide, pending, resume
from flujo_dagster.cli import main
from flujo_dagster.config import DAGSTER_HOME_ENV, WEBSERVER_URL_ENV
from tests.approval_defs import REQUEST_LOG, gated_job, loose_job
from tests.dagster_dev import dagster_dev
from tests.test_approvals import park
from tests.test_cli import run as run_cli
from tests.test_dagster_dev import INPUTS as DEV_INPUTS
from tests.test_dagster_dev import JOB as DEV_JOB


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    yield log


@pytest.fixture
def cli(dagster_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """The CLI in process, on the instance in `dagster_home`."""
    monkeypatch.setenv(DAGSTER_HOME_ENV, str(dagster_home))
    yield CliRunner()


def invoke(cli: CliRunner, *args: str) -> Result:
    return cli.invoke(main, list(args), catch_exceptions=False)


def test_deciding_on_a_resumed_run_names_the_run_parked_at_the_gate_now(
    instance: DagsterInstance, cli: CliRunner
) -> None:
    with execute_job(reconstructable(loose_job), instance=instance, raise_on_error=False) as first:
        assert first.success  # parked
    decide(first.run_id, verdict="approve", by="ana", values={"a": "many"}, instance=instance)
    again = resume(first.run_id, job=reconstructable(loose_job), instance=instance)  # the gate ignores the edit
    assert instance.get_run_by_id(again).tags["flujo/awaiting/g"] == "pending"  # type: ignore[union-attr]
    expected = f"run {first.run_id} was already resumed as run {again}, which is parked at gate g: decide on {again}"
    for gate in ((), ("--gate", "g")):
        result = invoke(cli, "approve", first.run_id, *gate, "--by", "bo")
        assert result.exit_code == 2 and result.stderr.strip() == expected, result.output
    # resumed again (decided on the run it named), the first run names the newest resume
    decide(again, verdict="approve", by="bo", values={"a": "7"}, instance=instance)
    done = resume(again, job=reconstructable(loose_job), instance=instance)
    result = invoke(cli, "reject", first.run_id, "--by", "bo", "--comment", "late")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"run {first.run_id} was already resumed (gate g) as run {done}, which is not parked at it "
        f"(status SUCCESS); see flujo-dagster audit {first.run_id}"
    )


def test_deciding_on_a_resumed_run_that_finished_says_it_is_not_parked(
    instance: DagsterInstance, cli: CliRunner, requests: Path
) -> None:
    parked = park(gated_job, instance)
    decide(parked, verdict="approve", by="ana", instance=instance)
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    expected = (
        f"run {parked} was already resumed (gate review) as run {resumed}, which is not parked at it "
        f"(status SUCCESS); see flujo-dagster audit {parked}"
    )
    for gate in ((), ("--gate", "review")):
        result = invoke(cli, "approve", parked, *gate, "--by", "bo")
        assert result.exit_code == 2 and result.stderr.strip() == expected, result.output
    # the resume itself never parked: nothing names another run
    result = invoke(cli, "approve", resumed, "--by", "bo")
    assert (
        result.exit_code == 2
        and result.stderr.strip() == f"run {resumed} is parked at 0 gates (none); name one with gate=..."
    )


def test_a_short_run_id_names_the_run_for_approve_and_audit(
    instance: DagsterInstance, cli: CliRunner, requests: Path
) -> None:
    parked = park(gated_job, instance)
    approved = invoke(cli, "approve", parked[:8], "--by", "ana")
    assert approved.exit_code == 0, approved.output
    assert approved.stdout.startswith(f"recorded: approve by ana on run {parked} (payload ")
    assert "flujo/decision/review/ana" in instance.get_run_by_id(parked).tags  # type: ignore[union-attr]
    audited = invoke(cli, "audit", parked[:8])
    assert audited.exit_code == 0 and [line.split()[2] for line in audited.stdout.splitlines()[:-1]] == [
        "request",
        "decision",
    ]


def test_an_ambiguous_or_unknown_run_id_prefix_is_refused(instance: DagsterInstance, cli: CliRunner) -> None:
    ids = ["abcd1234-0000-4000-8000-000000000001", "abcd1234-0000-4000-8000-000000000002"]
    for run_id in ids:
        instance.add_run(DagsterRun(job_name="gated", run_id=run_id))
    for command in (("approve", "abcd1234", "--by", "ana"), ("reject", "abcd12", "--by", "ana", "--comment", "no")):
        result = invoke(cli, *command)
        assert result.exit_code == 2 and result.stdout == ""
        assert all(run_id in result.stderr for run_id in ids), result.stderr
    for command in ("costs", "audit"):
        result = invoke(cli, command, "abcd1234-0000")
        assert result.exit_code == 2 and all(run_id in result.stderr for run_id in ids), result.stderr
    unknown = invoke(cli, "approve", "ffffffff", "--by", "ana")
    assert unknown.exit_code == 2 and "ffffffff" in unknown.stderr and ids[0] not in unknown.stderr
    # a full id is taken as it is
    refused = invoke(cli, "approve", ids[0], "--by", "ana")
    assert (
        refused.exit_code == 2
        and refused.stderr.strip() == f"run {ids[0]} is parked at 0 gates (none); name one with gate=..."
    )


HOSTILE = "otters<script>alert(1)</script>\x1b[31mred\x1b[2J\x1b]8;;http://evil.example\x07link\x1b]8;;\x07\x08"


def test_pending_prints_the_commands_and_no_terminal_control_character(
    instance: DagsterInstance, cli: CliRunner, requests: Path
) -> None:
    """A model's output (here: its draft repeats the topic) holding terminal escapes reaches no terminal."""
    config = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": HOSTILE}}}}}
    with execute_job(
        reconstructable(gated_job), instance=instance, run_config=config, tags={"dagster/user": "requester"}
    ) as first:
        assert first.success
        parked = first.run_id
    (waiting,) = pending(instance=instance)
    assert "\x1b" in waiting.preview  # the payload holds the escapes
    listed = invoke(cli, "pending")
    assert listed.exit_code == 0, listed.output
    assert not any(c in listed.output for c in "\x1b\x07\x08")
    lines = listed.stdout.splitlines()
    assert lines == [
        f"{parked}  review  gated > approval:review  payload {waiting.payload_hash[:12]}  waiting for a decision by "
        "anyone",
        "    draft: draft about otters<script>alert(1)</script>[31mred[2J]8;;http://evil.examplelink]8;;",
        f"    state (sha256 {waiting.state_hash})",
        "    decide with:",
        f"      flujo-dagster approve {parked} --gate 'review' --by NAME [--comment TEXT]",
        f"      flujo-dagster reject {parked} --gate 'review' --by NAME --comment TEXT",
        "1 pending approval(s)",
    ]


def test_flujo_dagster_run_prints_a_parked_request_without_control_characters(cli: CliRunner, requests: Path) -> None:
    ran = invoke(cli, "run", "tests.approval_defs:gated", "--input", f"topic={HOSTILE}")
    assert ran.exit_code == 3, ran.output
    assert not any(c in ran.output for c in "\x1b\x07\x08")
    assert "    draft: draft about otters<script>alert(1)</script>[31mred[2J" in ran.stdout
    assert "  decide with:" in ran.stdout and "    flujo-dagster reject " in ran.stdout


def test_approve_launches_the_resume_at_once_under_dagster_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI decision on a run parked in a code location launches its resume through the webserver before the
    command returns (the sensor, which ticks every 10 minutes here, is only the fallback)."""
    home = tmp_path / "home"
    with dagster_dev(home, interval_s=600) as dev:
        first = dev.launch(DEV_JOB, DEV_INPUTS, tags={"dagster/user": "requester"})
        run = dev.wait_finished(first)
        assert run.tags.get("flujo/parked") == "true", dev.log_tail()
        monkeypatch.setenv(WEBSERVER_URL_ENV, dev.server.url)
        approved = run_cli("approve", first[:8], "--by", "ana", home=home)
        assert approved.returncode == 0, (approved.stdout, approved.stderr, dev.log_tail())
        children = dev.instance.get_runs(filters=RunsFilter(tags={"dagster/parent_run_id": first}))
        assert len(children) == 1, (approved.stdout, approved.stderr)  # launched before the command returned
        (child,) = children
        assert child.tags["flujo/resumed_by"] == "flujo-dagster approve by ana"
        assert f"resumed run {first} as run {child.run_id}" in approved.stdout, approved.stdout
        assert dev.wait_finished(child.run_id).tags.get("flujo/parked") == "true"  # the loop's second gate
