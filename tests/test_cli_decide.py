"""Deciding from the command line: short run ids, deciding on a run that was already resumed, what `pending` prints
(the commands to decide, nothing a model wrote reaching the terminal as control characters), and a decision that
launches the resume at once through the webserver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from dagster import DagsterInstance, execute_job, reconstructable

from flujo_dagster.adapter.control.approvals import decide, resume
from flujo_dagster.cli import main
from flujo_dagster.config import DAGSTER_HOME_ENV
from tests.approval_defs import REQUEST_LOG, gated_job, loose_job
from tests.test_approvals import park


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
