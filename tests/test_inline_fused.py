"""Fused inline ops: an inline op's Dagster events do not grow with its steps; the keys it writes reach expanded
readers as their own types, from this run or (re-execution) its parent; an asset written inside still
materializes with its review metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, ReexecutionOptions, execute_job, reconstructable
from pydantic import BaseModel, create_model

from flujo_dagster import Pipeline, PydanticJsonIOManager, load_final_context, names, run_pipeline, step
from flujo_dagster.adapter.control.approvals import gates_waiting
from flujo_dagster.adapter.inbox.payload import shown_values
from flujo_dagster.dsl import FunctionStep, Group
from flujo_dagster.runtime.approvals import Request
from tests.fused_defs import CALL_LOG, FAIL_MARKER, Doc, Note, defs, fused, fused_job

RUN_CONFIG: dict[str, Any] = {
    "ops": {"fused_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "hello world"}}}}}}
}


def _increment(**kwargs: int) -> int:
    (value,) = kwargs.values()
    return value + 1


def chain(n: int) -> Pipeline[Any]:
    """One inline group of n steps: step i reads k{i-1} and writes k{i}."""
    context: type[BaseModel] = create_model("Chain", **{f"k{i}": (int, ...) for i in range(n + 1)})  # type: ignore[call-overload]
    steps: list[FunctionStep] = [
        step(name=f"s{i}", input_keys=[f"k{i - 1}"], output_keys=[f"k{i}"])(_increment) for i in range(1, n + 1)
    ]
    return Pipeline(f"chain{n}", context=context, steps=[Group("chain", steps=steps, inline=True)])


def test_events_of_an_inline_chain_do_not_grow_with_its_steps(instance: DagsterInstance) -> None:
    counts = {}
    for n in (10, 60):
        result = run_pipeline(chain(n), {"k0": 0}, instance=instance)
        assert getattr(result.context, f"k{n}") == n
        logs = instance.all_logs(result.run_id)
        counts[n] = len(logs)
        outputs = [e.dagster_event for e in logs if e.dagster_event_type == DagsterEventType.STEP_OUTPUT]
        bundle = [e for e in outputs if e is not None and e.step_output_data.output_name == names.BUNDLE_OUTPUT]
        assert len(bundle) == 1  # the per-step table rides on the bundle
        table = bundle[0].step_output_data.metadata[names.STEPS].value
        assert f"s{n} |" in str(table)
    assert counts[10] == counts[60]


def test_reexecution_reuses_the_bundle_and_readers_get_typed_keys(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker, log = tmp_path / "fail", tmp_path / "calls.log"
    marker.touch()
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(CALL_LOG, str(log))
    job = reconstructable(fused_job)
    with execute_job(job, instance=instance, run_config=RUN_CONFIG) as first:
        assert not first.success
        parent_id = first.run_id
    marker.unlink()
    options = ReexecutionOptions.from_failure(parent_id, instance)
    with execute_job(job, instance=instance, reexecution_options=options) as second:
        assert second.success
        rerun = {e.step_key for e in second.all_events if e.event_type == DagsterEventType.STEP_START}
        run_id = second.run_id
    assert "fused_graph.prep" not in rerun and "fused_graph.final" in rerun
    assert log.read_text().splitlines() == ["note"]  # the inline op ran once, in the parent run
    context = load_final_context(fused, run_id, instance=instance)
    assert isinstance(context, Doc) and context.note == Note(text="HELLO WORLD", words=2)
    assert context.final == "HELLO WORLD|2|HELLO WORLD:2"
    root = PydanticJsonIOManager().root(instance.storage_directory())
    # one file for the keys of the inline op, in the parent run only; none of its own per key
    assert PydanticJsonIOManager.output_path(root, parent_id, "fused_graph.prep", names.BUNDLE_OUTPUT).exists()
    assert not PydanticJsonIOManager.output_path(root, run_id, "fused_graph.prep", names.BUNDLE_OUTPUT).exists()
    assert not PydanticJsonIOManager.output_path(root, parent_id, "fused_graph.prep", "note").exists()


def test_an_asset_written_inside_a_fused_op_materializes_with_its_review_metadata(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAIL_MARKER, str(tmp_path / "absent"))
    monkeypatch.setenv(CALL_LOG, str(tmp_path / "calls.log"))
    with execute_job(reconstructable(fused_job), instance=instance, run_config=RUN_CONFIG) as result:
        assert result.success
        run_id = result.run_id
    found = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        assert record.dagster_event is not None
        materialization = record.dagster_event.event_specific_data.materialization  # type: ignore[union-attr]
        found[materialization.asset_key.path[-1]] = dict(materialization.metadata)
    assert "summary" in found
    metadata = found["summary"]
    assert "HELLO WORLD:2" in str(metadata[names.PREVIEW].value)
    assert metadata[names.TYPE].value == "str" and names.TOTAL_COST_USD in metadata


def test_a_hand_edited_bundle_fails_the_reexecution_that_loads_it(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "fail"
    marker.touch()
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(CALL_LOG, str(tmp_path / "calls.log"))
    job = reconstructable(fused_job)
    with execute_job(job, instance=instance, run_config=RUN_CONFIG) as first:
        assert not first.success
        parent_id = first.run_id
    root = PydanticJsonIOManager().root(instance.storage_directory())
    bundle = PydanticJsonIOManager.output_path(root, parent_id, "fused_graph.prep", names.BUNDLE_OUTPUT)
    bundle.write_bytes(bundle.read_bytes().replace(b"HELLO WORLD", b"HELLO THERE"))  # still the right types
    marker.unlink()
    options = ReexecutionOptions.from_failure(parent_id, instance)
    with execute_job(job, instance=instance, reexecution_options=options) as second:
        assert not second.success
        failures = [e for e in second.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failures and "changed after it was written" in str(failures[0].step_failure_data.error)


def test_a_gate_shows_a_key_of_a_fused_inline_op(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAIL_MARKER, str(tmp_path / "absent"))
    monkeypatch.setenv(CALL_LOG, str(tmp_path / "calls.log"))
    config = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "hello world"}}}}}
    result = defs.resolve_job_def("fused_gated").execute_in_process(
        run_config=config, instance=instance, raise_on_error=False
    )
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    (waiting,) = gates_waiting(instance, run)
    request = Request.from_tag(run.tags[names.REQUEST_PREFIX + waiting.gate], gate=waiting.gate)
    assert isinstance(request, Request)
    shown = shown_values(instance, run, waiting.gate, request)
    assert shown.values == {"note": {"text": "HELLO WORLD", "words": 2}}, shown.problem
