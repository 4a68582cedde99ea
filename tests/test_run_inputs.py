"""Run inputs are validated by the whole context model (its `model_config`, field constraints and field
validators) before any step runs, through each entry point: `run_pipeline` / `arun_pipeline`,
`flujo-dagster run --input`, and the first op's run config (the Launchpad's and schedules' path)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import anyio
import pytest
from dagster import DagsterEventType, DagsterInstance
from pydantic import BaseModel, ConfigDict, ValidationError

from flujo_dagster import Pipeline, RunInputsError, arun_pipeline, run_pipeline, step
from flujo_dagster.adapter.compile.compiler import compile_pipeline
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.names import CONTEXT_OUTPUT
from tests.fixtures import run_inputs
from tests.fixtures.run_inputs import CALLS, brief, resources
from tests.test_cli import run

HUGE = "x" * 5_000
BAD = [
    pytest.param(
        {"topic": HUGE},
        "topic: String should have at most 12 characters (string_too_long; got a str of 5000 characters)",
        id="model_config-str_max_length",
    ),
    pytest.param(
        {"topic": "agents", "count": 0},
        "count: Input should be greater than 0 (greater_than; got 0)",
        id="field-constraint",
    ),
    pytest.param(
        {"topic": "   "},
        "topic: Value error, topic must not be blank (value_error; got '   ')",
        id="field-validator",
    ),
]
GOOD = {"topic": "agents", "count": 2}
EVERY_CALL = ["model request", "note", "seed"]  # sorted: steps that read different keys run in any order


@pytest.fixture(autouse=True)
def no_calls_yet() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def _check_refusal(error: RunInputsError, problem: str) -> None:
    assert error.problems == (problem,)
    text = str(error)
    assert text.startswith("invalid run inputs for pipeline 'brief' (1 problem(s), checked with Brief; no step ran):")
    assert text.endswith(
        "Fix the inputs named above and run again. Pipeline 'brief' requires: topic; its other inputs have "
        "defaults: count, seed, note, answer."
    )
    assert HUGE[:100] not in text  # a huge value is described, never echoed
    assert isinstance(error.__cause__, ValidationError)


@pytest.mark.parametrize(("inputs", "problem"), BAD)
def test_run_pipeline_refuses_inputs_the_context_model_refuses_before_any_step(
    instance: DagsterInstance, inputs: dict[str, object], problem: str
) -> None:
    with pytest.raises(RunInputsError) as refused:
        run_pipeline(brief, inputs, instance=instance, resources=resources)
    _check_refusal(refused.value, problem)
    assert CALLS == [] and instance.get_runs() == []
    with pytest.raises(RunInputsError) as refused:
        anyio.run(lambda: arun_pipeline(brief, inputs, instance=instance, resources=resources))
    _check_refusal(refused.value, problem)
    assert CALLS == [] and instance.get_runs() == []


def test_run_pipeline_runs_inputs_the_context_model_accepts(instance: DagsterInstance) -> None:
    result = run_pipeline(brief, GOOD, instance=instance, resources=resources, log_level="CRITICAL")
    assert result.context.note == "agentsx2+7" and result.context.answer == "ok"
    assert sorted(CALLS) == EVERY_CALL


@pytest.mark.parametrize(("inputs", "problem"), BAD)
def test_the_first_op_refuses_launchpad_inputs_the_context_model_refuses_before_any_step(
    instance: DagsterInstance, inputs: dict[str, object], problem: str
) -> None:
    job = run_inputs.defs.resolve_job_def("brief")
    config = compile_pipeline(brief, translator=FlujoDagsterTranslator()).inputs_run_config(inputs)
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    started = [e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START]
    assert started == ["flujo_inputs"]  # `seed` reads no key, yet waits for the inputs
    assert CALLS == []
    (failure,) = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failure.step_failure_data is not None and failure.step_failure_data.error is not None
    cause = failure.step_failure_data.error.cause  # under Dagster's DagsterExecutionStepExecutionError
    assert cause is not None and cause.cls_name == "RunInputsError"
    assert f"  - {problem}\n" in cause.message and HUGE[:100] not in cause.message


def test_the_first_op_runs_launchpad_inputs_the_context_model_accepts(instance: DagsterInstance) -> None:
    job = run_inputs.defs.resolve_job_def("brief")
    config = compile_pipeline(brief, translator=FlujoDagsterTranslator()).inputs_run_config(GOOD)
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert result.success
    assert result.output_for_node("flujo_context", CONTEXT_OUTPUT).note == "agentsx2+7"
    assert sorted(CALLS) == EVERY_CALL


@pytest.mark.parametrize(("inputs", "problem"), BAD)
def test_the_cli_refuses_inputs_the_context_model_refuses_before_any_step(
    dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inputs: dict[str, object], problem: str
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FLUJO_TEST_CALLS_FILE", str(calls))
    args = [a for k, v in inputs.items() for a in ("--input", f"{k}={v}")]
    result = run("run", "tests.fixtures.run_inputs:brief", *args, home=dagster_home)
    assert result.returncode == 2, result.stderr
    assert "run id:" not in result.stdout
    lines = result.stderr.splitlines()
    assert lines[0] == "invalid run inputs for pipeline 'brief' (1 problem(s), checked with Brief; no step ran):"
    # `count=0` stays text: it is not valid for the key's type, so the CLI hands the text over as given
    shown = problem.replace("got 0", "got '0'")
    assert lines[1:] == [f"  - {shown}", lines[2]]
    assert lines[2].startswith("Fix the inputs named above")
    assert not calls.exists()
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_runs() == []


def test_the_cli_runs_inputs_the_context_model_accepts(
    dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FLUJO_TEST_CALLS_FILE", str(calls))
    args = [a for k, v in GOOD.items() for a in ("--input", f"{k}={v}")]
    result = run("run", "tests.fixtures.run_inputs:brief", *args, home=dagster_home)
    assert result.returncode == 0, result.stderr
    context = json.loads(result.stdout.split("final context (Brief):\n", 1)[1])
    assert context["note"] == "agentsx2+7" and context["answer"] == "ok"
    assert sorted(calls.read_text().splitlines()) == EVERY_CALL


class Dated(BaseModel):
    model_config = ConfigDict(strict=True)

    on: date
    n: int = 1
    label: str = ""


@step
def label(on: date, n: int) -> str:
    return f"{on:%d %b} x{n}"


def test_a_strict_context_takes_its_inputs_as_json_as_they_arrive(instance: DagsterInstance) -> None:
    """Strict, as the context says: no "3" for an int. But an ISO date is how a date arrives from the CLI, the
    Launchpad and a schedule tick (JSON), and strict JSON takes it, as the final context's validation does."""
    dated = Pipeline("dated", context=Dated, steps=[label])
    result = run_pipeline(dated, {"on": "2026-11-05", "n": 2}, instance=instance, log_level="CRITICAL")
    assert result.context == Dated(on=date(2026, 11, 5), n=2, label="05 Nov x2")
    # a Python value is handed to the run's config as JSON (Dagster stores run config as JSON)
    assert run_pipeline(dated, {"on": date(2026, 11, 5)}, instance=instance).context.label == "05 Nov x1"
    with pytest.raises(RunInputsError) as refused:
        run_pipeline(dated, {"on": "2026-11-05", "n": "2"}, instance=instance)
    assert refused.value.problems == ("n: Input should be a valid integer (int_type; got '2')",)


class Loose(BaseModel):
    topic: str
    extra: Any = None
    out: str = ""


@step
def out(topic: str) -> str:
    CALLS.append("out")
    return topic


def test_an_input_a_runs_config_cannot_hold_is_refused_before_any_step(instance: DagsterInstance) -> None:
    loose = Pipeline("loose", context=Loose, steps=[out])
    with pytest.raises(RunInputsError) as refused:
        run_pipeline(loose, {"topic": "agents", "extra": object()}, instance=instance)
    assert refused.value.problems == ("extra: a object, which a run's config cannot hold (JSON values only)",)
    assert CALLS == [] and instance.get_runs() == []
