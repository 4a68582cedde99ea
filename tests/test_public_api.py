"""One switch per idea in the public API: options are keyword-only, `instance` is keyword-only, durations are
`timedelta`, and `flujo_dagster.dsl.__all__` is the public DSL only."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest

import flujo_dagster
import flujo_dagster.dsl
from flujo_dagster import (
    Approval,
    Check,
    ConfigurationError,
    PriceBook,
    Retry,
    agent_step,
    build_definitions,
    step,
)
from flujo_dagster.adapter.control.costs import run_costs
from tests.approval_defs import gated

PUBLIC = {name: getattr(flujo_dagster, name) for name in flujo_dagster.__all__}
CALLABLES = {n: o for n, o in PUBLIC.items() if callable(o) and not (isinstance(o, type) and issubclass(o, Exception))}
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _positional(fn: object) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in POSITIONAL]  # type: ignore[arg-type]


def test_public_constructors_take_at_most_their_identity_positionally() -> None:
    classes = {n: o for n, o in CALLABLES.items() if isinstance(o, type)}
    assert {"Check", "PriceBook", "Retry", "Approval", "Pipeline"} <= set(classes)
    too_many = {n: _positional(o) for n, o in classes.items() if len(_positional(o)) > 1}
    assert too_many == {}
    assert _positional(Check) == ["key"] and _positional(PriceBook) == [] and _positional(agent_step) == ["name"]
    assert _positional(step) == ["fn"]  # the decorated function


def test_instance_is_keyword_only_in_every_public_function() -> None:
    with_instance = {n: o for n, o in CALLABLES.items() if "instance" in inspect.signature(o).parameters}
    with_instance["run_costs"] = run_costs
    assert {"pending", "decide", "resume", "audit_trail", "load_final_context", "run_pipeline"} <= set(with_instance)
    kinds = {n: inspect.signature(o).parameters["instance"].kind for n, o in with_instance.items()}
    assert {n for n, k in kinds.items() if k is not inspect.Parameter.KEYWORD_ONLY} == set()


def test_options_given_positionally_are_refused() -> None:
    with pytest.raises(TypeError):
        Check("summary", bool)  # type: ignore[misc]
    with pytest.raises(TypeError):
        agent_step("draft", None, prompt="{topic}")  # type: ignore[misc]
    with pytest.raises(TypeError):
        PriceBook({})  # type: ignore[misc]
    assert Check("summary", fn=bool).name == "bool"


def test_the_dsl_exports_only_the_public_dsl() -> None:
    dsl_names = set(flujo_dagster.dsl.__all__)
    reexported = {n for n, o in PUBLIC.items() if getattr(o, "__module__", "").startswith("flujo_dagster.dsl")}
    assert dsl_names == reexported
    assert not dsl_names & {"walk", "Flow", "flow_of", "flow_of_steps", "StepKeys", "resolve_keys", "model_id_of"}
    assert "StepSequence" not in dsl_names


def _echo(topic: str) -> str:
    return topic


def test_durations_are_timedeltas_and_numbers_are_refused_with_the_fix() -> None:
    assert step(timeout=timedelta(seconds=2))(_echo).timeout == timedelta(seconds=2)
    assert Retry(delay=timedelta(milliseconds=200)).delay == timedelta(milliseconds=200)
    assert Retry().delay == timedelta(seconds=1)
    td = "must be a datetime.timedelta, got"
    cases = [
        (lambda: step(timeout=5)(_echo), f"step '_echo' timeout {td} 5: write e.g. timedelta(seconds=5)"),  # type: ignore[arg-type]
        (lambda: Retry(delay=0.5), f"Retry delay {td} 0.5: write e.g. timedelta(seconds=0.5)"),  # type: ignore[arg-type]
        (lambda: Retry(delay=timedelta(seconds=-1)), "Retry delay must be at least 0, got datetime.timedelta(days=-1"),
        (lambda: agent_step("a", agent=None, prompt="x", timeout=timedelta(0)), "step 'a' timeout must be positive"),
        (lambda: Approval("gate", show=["topic"], timeout=3600), f"Approval 'gate' timeout {td} 3600"),  # type: ignore[arg-type]
    ]
    for make, message in cases:
        with pytest.raises(ConfigurationError) as raised:
            make()
        assert str(raised.value).startswith(message)


def test_the_approvals_interval_argument_is_a_timedelta() -> None:
    defs = build_definitions(pipelines=[gated], approvals_interval=timedelta(minutes=1))
    assert defs.resolve_sensor_def("flujo_approvals").minimum_interval_seconds == 60
    with pytest.raises(ConfigurationError, match="approvals_interval must be a datetime.timedelta, got 45"):
        build_definitions(pipelines=[gated], approvals_interval=45)  # type: ignore[arg-type]
