"""Runs stopped mid-step under a real `dagster dev`. Terminated from the UI (GraphQL `terminateRun`, what the
Terminate button sends): the run ends CANCELED, nothing after the interrupted step runs, it has no final context,
and a re-execution from failure finishes it, running only the steps that had not finished. Its run worker killed
(SIGKILL): the code server that launched the worker marks the run FAILURE, and it is re-executed from failure the
same way."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, ReexecutionOptions, execute_job, reconstructable

from flujo_dagster import StorageError, load_final_context
from tests import cancel_defs
from tests.cancel_defs import MARKERS_ENV, Held, held
from tests.dagster_dev import dagster_dev

INPUTS = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}
TERMINATE = """
mutation Terminate($runId: String!, $policy: TerminateRunPolicy) {
  terminateRun(runId: $runId, terminatePolicy: $policy) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""


def _wait_for(path: Path, line: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} never appeared in {path}")


def test_a_run_terminated_mid_step_is_canceled_and_reexecution_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "markers"
    folder.mkdir()
    (folder / "hold").touch()
    calls = folder / "calls.txt"
    monkeypatch.setenv(MARKERS_ENV, str(folder))
    target = ("-m", "tests.cancel_defs")
    with dagster_dev(tmp_path / "home", target=target, env={MARKERS_ENV: str(folder)}) as dev:
        run_id = dev.launch("held", INPUTS)
        _wait_for(calls, "middle started")
        terminated = dev.server.graphql(TERMINATE, {"runId": run_id, "policy": "SAFE_TERMINATE"})["terminateRun"]
        assert terminated["__typename"] == "TerminateRunSuccess", terminated
        run = dev.wait_finished(run_id)
        assert run.status == DagsterRunStatus.CANCELED, dev.log_tail()
        assert calls.read_text().splitlines() == ["first", "middle started"]  # interrupted; nothing after it ran
        with pytest.raises(StorageError, match=f"run {run_id}"):
            load_final_context(held, run_id, instance=dev.instance)

        _reexecute_and_finish(dev.instance, run_id, folder)


def _reexecute_and_finish(instance: DagsterInstance, run_id: str, folder: Path) -> None:
    """Re-execute `run_id` from failure: only the interrupted step and those after it run, to the same context."""
    (folder / "hold").unlink()
    options = ReexecutionOptions.from_failure(run_id, instance)
    job = reconstructable(cancel_defs.held_job)
    with execute_job(job, instance=instance, reexecution_options=options, raise_on_error=False) as again:
        assert again.success
        child = again.run_id
    lines = (folder / "calls.txt").read_text().splitlines()
    assert lines == ["first", "middle started", "middle started", "middle finished", "last"]
    assert load_final_context(held, child, instance=instance) == Held(
        topic="agents", first="AGENTS", middle="AGENTS!", last="AGENTS!?"
    )


def test_a_run_whose_worker_is_killed_mid_step_fails_and_reexecution_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "markers"
    folder.mkdir()
    (folder / "hold").touch()
    calls = folder / "calls.txt"
    monkeypatch.setenv(MARKERS_ENV, str(folder))
    target = ("-m", "tests.cancel_defs")
    with dagster_dev(tmp_path / "home", target=target, env={MARKERS_ENV: str(folder)}) as dev:
        run_id = dev.launch("held", INPUTS)
        _wait_for(calls, "middle started")
        os.kill(int((folder / "worker.pid").read_text()), signal.SIGKILL)
        run = dev.wait_finished(run_id)
        assert run.status == DagsterRunStatus.FAILURE, dev.log_tail()  # the code server saw its worker die
        messages = [e.dagster_event.message or "" for e in dev.instance.all_logs(run_id) if e.dagster_event]
        assert any(f"Run execution process for {run_id} was terminated by signal 9" in m for m in messages)
        assert calls.read_text().splitlines() == ["first", "middle started"]
        _reexecute_and_finish(dev.instance, run_id, folder)
