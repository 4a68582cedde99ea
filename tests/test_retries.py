"""One retry policy on both engines: the same leaf step, run expanded (its own op) and inline (inside an inline
group, by the interpreter), makes the same attempts, writes the same values, and fails with the same original
error (never Dagster's "Exceeded max_retries"), in `run_pipeline`'s error, in the Dagster step failure and in
the CLI; under the in-process and the multiprocess executors. The cases are in tests/retry_defs.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    JobDefinition,
    execute_job,
    reconstructable,
)
from dagster._utils.error import SerializableErrorInfo

from flujo_dagster import Retry, load_final_context, run_pipeline, step
from flujo_dagster.errors import (
    ApprovalError,
    ApprovalRejectedError,
    ConfigurationError,
    ControlFlowError,
    ParallelBranchError,
    PricingNotConfiguredError,
    StepOutputError,
    StepTimeoutError,
    UsageLimitExceededError,
)
from flujo_dagster.runtime.leaf import LeafExecutor
from flujo_dagster.runtime.records import StepRecord
from flujo_dagster.runtime.retries import is_retried, retry_delay
from tests import retry_defs
from tests.retry_defs import CASES, Trial, agent_runtime, attempts, pipeline

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Outcome:
    """What a run of one case showed: attempts, retry warnings, final values or the original error (in
    `run_pipeline`'s error, without its `step <key>: ` prefix, and in the Dagster step failure)."""

    attempts: int
    warnings: int
    values: dict[str, object] | None
    error: str | None
    failure: tuple[str, str] | None


def original(error: SerializableErrorInfo) -> tuple[str, str]:
    """The class and message of the error under Dagster's wrappers and flujo's `Failure` around its own."""
    while error.cause is not None and (error.cls_name.startswith("Dagster") or error.cls_name == "Failure"):
        error = error.cause
    return error.cls_name or "", error.message.strip()


def chain(error: SerializableErrorInfo | None) -> str:
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def outcome(instance: DagsterInstance, run_id: str, tally: Path, values: dict[str, object] | None) -> Outcome:
    events = instance.all_logs(run_id)
    assert instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY) == []  # retried in the op
    warnings = sum("trying again in" in e.user_message for e in events)
    failures = [
        e.dagster_event.step_failure_data for e in events if e.is_dagster_event and e.dagster_event.is_step_failure
    ]  # type: ignore[union-attr]
    failure = None
    if failures:
        (data,) = failures
        assert data is not None and data.error is not None
        assert "Exceeded max_retries" not in chain(data.error)
        failure = original(data.error)
        failure = (failure[0], RUN_ID.sub("<run>", failure[1]))
    return Outcome(attempts(tally), warnings, values, None, failure)


def run_case(name: str, inline: bool, instance: DagsterInstance, tally: Path) -> Outcome:
    result = run_pipeline(
        pipeline(name, inline=inline),
        {"tally": str(tally)},
        instance=instance,
        resources={"agent_runtime": agent_runtime()},
        log_level="CRITICAL",
    )
    values = result.final_context.model_dump(exclude={"tally", "n"}) if result.final_context is not None else None
    seen = outcome(instance, result.run_id, tally, values)
    error = None
    if not result.success:
        assert result.error is not None and "Exceeded max_retries" not in result.error
        step_key = "g" if inline else f"g__{name}"
        assert result.error.startswith(f"step {step_key}: "), result.error
        error = RUN_ID.sub("<run>", result.error.removeprefix(f"step {step_key}: "))
    return Outcome(seen.attempts, seen.warnings, seen.values, error, seen.failure)


@pytest.mark.parametrize("name", list(CASES))
def test_a_leaf_tries_writes_and_fails_alike_expanded_and_inline(
    name: str, instance: DagsterInstance, tmp_path: Path
) -> None:
    case = CASES[name]
    expanded = run_case(name, False, instance, tmp_path / "expanded")
    inline = run_case(name, True, instance, tmp_path / "inline")
    assert expanded == inline
    assert expanded.attempts == case.attempts
    assert expanded.warnings == case.attempts - 1  # a warning for each attempt tried again
    if case.values is not None:
        assert expanded.error is None and expanded.failure is None
        assert expanded.values == Trial.model_validate({"tally": "", **case.values}).model_dump(exclude={"tally", "n"})
        return
    assert case.error is not None and expanded.failure is not None and expanded.error is not None
    cls, text = case.error
    assert expanded.failure[0] == cls and text in expanded.failure[1]
    assert expanded.error == expanded.failure[1]  # run_pipeline reports what the step failure holds
    assert expanded.values is None


def test_the_cli_reports_the_original_error_after_the_retries(dagster_home: Path, tmp_path: Path) -> None:
    tally = tmp_path / "tally"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    script = Path(sys.executable).parent / "flujo-dagster"
    target = "tests.retry_defs:always_expanded"
    result = subprocess.run(
        [str(script), "run", target, "--input", f"tally={tally}", "--log-level", "CRITICAL"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "run failed: step g__always: ValueError: boom 1"
    assert attempts(tally) == 3


MULTIPROCESS_JOBS: dict[tuple[str, bool], Callable[[], JobDefinition]] = {
    ("flaky", False): retry_defs.flaky_expanded_job,
    ("flaky", True): retry_defs.flaky_inline_job,
    ("always", False): retry_defs.always_expanded_job,
    ("always", True): retry_defs.always_inline_job,
}


@pytest.mark.parametrize("name", ["flaky", "always"])
def test_under_the_multiprocess_executor_too(name: str, instance: DagsterInstance, tmp_path: Path) -> None:
    seen: dict[bool, Outcome] = {}
    for inline in (False, True):
        tally = tmp_path / f"{inline}"
        run_config = {"ops": {"flujo_inputs": {"config": {"inputs": {"tally": str(tally)}}}}}
        job = reconstructable(MULTIPROCESS_JOBS[(name, inline)])
        with execute_job(job, instance=instance, run_config=run_config) as result:
            run_id, success = result.run_id, result.success
        form = pipeline(name, inline=inline, name=f"{name}_{'inline' if inline else 'expanded'}")
        values = load_final_context(form, run_id, instance=instance).model_dump(include={"out"}) if success else None
        seen[inline] = outcome(instance, run_id, tally, values)
    assert seen[False] == seen[True]
    case = CASES[name]
    assert seen[False].attempts == case.attempts
    assert seen[False].warnings == case.attempts - 1
    if name == "flaky":
        assert seen[False].values == {"out": 2}
    else:
        assert seen[False].failure == ("ValueError", "ValueError: boom 1")


# --- the policy itself -------------------------------------------------------------------------------------------


class UserFailure(Exception):
    """Like `dagster.Failure`: says whether it may be retried."""

    def __init__(self, allow_retries: bool) -> None:
        super().__init__("user failure")
        self.allow_retries = allow_retries


def test_the_policy_never_retries_our_errors_that_another_attempt_cannot_fix() -> None:
    never = [
        StepOutputError("x"),
        ConfigurationError("x"),
        PricingNotConfiguredError("x"),
        UsageLimitExceededError("x"),
        ApprovalError("x"),
        ApprovalRejectedError("x"),
        ControlFlowError("x"),
        UserFailure(allow_retries=False),
    ]
    retried = [
        ValueError("x"),
        RuntimeError("x"),
        StepTimeoutError("x"),
        ParallelBranchError("x"),
        UserFailure(allow_retries=True),
    ]
    assert [is_retried(e) for e in never] == [False] * len(never)
    assert [is_retried(e) for e in retried] == [True] * len(retried)


def test_the_delay_grows_as_the_backoff_says() -> None:
    delays = {
        backoff: [
            retry_delay(Retry(max_retries=3, delay=timedelta(seconds=0.5), backoff=backoff), n) for n in (1, 2, 3)
        ]
        for backoff in ("constant", "linear", "exponential")
    }
    assert delays == {"constant": [0.5, 0.5, 0.5], "linear": [0.5, 1.0, 1.5], "exponential": [0.5, 1.0, 2.0]}


class Reports:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.retries: list[tuple[str, int, int, str, float]] = []

    def step_finished(self, record: StepRecord) -> None:
        self.records.append(record)

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None:
        self.retries.append((path, attempt, attempts, str(error), delay_s))


def test_the_executor_waits_between_attempts_and_reports_each() -> None:
    calls: list[float] = []

    @step(name="out", retry=Retry(max_retries=2, delay=timedelta(seconds=0.1), backoff="linear"))
    def out(n: int) -> int:
        calls.append(anyio.current_time())
        raise RuntimeError(f"no {len(calls)}")

    reports = Reports()
    executor = LeafExecutor(fields=Trial.model_fields, reporter=reports)
    with pytest.raises(RuntimeError, match="^no 3$"):
        anyio.run(executor.run, out, {"n": 1}, "p > step:out")
    assert [round(b - a, 1) for a, b in zip(calls, calls[1:], strict=False)] == [0.1, 0.2]
    assert reports.retries == [("p > step:out", 1, 3, "no 1", 0.1), ("p > step:out", 2, 3, "no 2", 0.2)]
    (record,) = reports.records
    assert (record.status, record.attempts, record.error) == ("failed", 3, "RuntimeError: no 3")
