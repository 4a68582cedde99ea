"""Materializing a subset of a pipeline's assets: only the steps the selected assets need run, the keys made
upstream of the subset load from their latest materialization (of the same partition), and a value that was never
materialized fails the run, naming pipeline, key, asset and partition, before any model call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from flujo_dagster import Pipeline, build_definitions
from flujo_dagster.adapter.control.approvals import decide, resume
from tests.approval_defs import REQUEST_LOG as APPROVAL_LOG
from tests.conftest import dg_executable
from tests.subset_defs import CALLS, FAIL_MARKER, REQUEST_LOG, RUNTIME, briefed_job, chain, chain_job, noted

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _defs(pipeline: Pipeline) -> Definitions:
    return build_definitions(pipelines=[pipeline], resources={"agent_runtime": RUNTIME})


def _steps(instance: DagsterInstance, run_id: str) -> set[str]:
    return {
        e.step_key.split(".")[-1]
        for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)
        if e.step_key
    }


def _materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    events = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    return {e.dagster_event.asset_key.path[-1] for e in events if e.dagster_event and e.dagster_event.asset_key}


def _failure(instance: DagsterInstance, run_id: str) -> str:
    failures = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    return "\n".join(
        str(e.dagster_event.step_failure_data.error)
        for e in failures
        if e.dagster_event and e.dagster_event.step_failure_data
    )


REPORT = AssetKey(["chain", "report"])


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    CALLS.clear()


def test_the_last_asset_alone_runs_no_upstream_step(instance: DagsterInstance) -> None:
    defs = _defs(chain())
    job = defs.resolve_job_def("chain")
    assert job.execute_in_process(instance=instance, run_config=QUIET).success
    assert CALLS == {"model": 2, "outline": 1}
    CALLS.clear()
    shutil.rmtree(Path(instance.storage_directory()) / "flujo" / "assets")  # loads follow the materialization events
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[REPORT])
    assert sub.success
    assert CALLS == {"model": 1}  # the report's own request; facts and outline are not recomputed
    assert _steps(instance, sub.run_id) == {"flujo_inputs", "report", "flujo_context"}
    assert _materialized(instance, sub.run_id) == {"report"}
    value = defs.load_asset_value(REPORT, instance=instance)
    assert value == "<report on outline of <facts about a>>"  # made from the previous run's outline


def test_a_subset_whose_upstream_was_never_materialized_fails_before_any_model_call(instance: DagsterInstance) -> None:
    job = _defs(chain()).resolve_job_def("chain")
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[REPORT], raise_on_error=False)
    assert not sub.success
    assert CALLS == {}
    assert _steps(instance, sub.run_id) == set()  # flujo_inputs refused the run: no step succeeded
    message = _failure(instance, sub.run_id)
    assert (
        "pipeline 'chain': this run materializes a subset of its assets and needs key 'outline' from asset "
        "chain/outline, which has never been materialized. Materialize asset chain/outline first, or include it "
        "in the selection."
    ) in message


def test_a_partitioned_subset_loads_the_same_partition(instance: DagsterInstance) -> None:
    defs = _defs(chain(partitioned=True))
    job = defs.resolve_job_def("chain")
    for partition in ("a", "b"):
        assert job.execute_in_process(instance=instance, run_config=QUIET, partition_key=partition).success
    CALLS.clear()
    sub = job.execute_in_process(instance=instance, run_config=QUIET, partition_key="b", asset_selection=[REPORT])
    assert sub.success and CALLS == {"model": 1}
    assert (
        defs.load_asset_value(REPORT, instance=instance, partition_key="b") == "<report on outline of <facts about b>>"
    )
    CALLS.clear()
    never = job.execute_in_process(
        instance=instance, run_config=QUIET, partition_key="c", asset_selection=[REPORT], raise_on_error=False
    )
    assert not never.success and CALLS == {}
    assert "needs key 'outline' from asset chain/outline, partition 'c', which has never been materialized" in (
        _failure(instance, never.run_id)
    )


def test_subsetting_leaves_the_asset_graph_as_it_was() -> None:
    defs = _defs(chain())
    specs = {s.key.path[-1]: s for s in defs.resolve_all_asset_specs()}
    assert {d.asset_key.path[-1] for d in specs["report"].deps} == {"outline"}
    assert {d.asset_key.path[-1] for d in specs["outline"].deps} == {"facts"}
    (assets,) = [a for a in defs.resolve_asset_graph().assets_defs if a.keys]
    assert assets.can_subset


def test_a_middle_asset_alone_runs_its_own_step_only(instance: DagsterInstance) -> None:
    job = _defs(chain()).resolve_job_def("chain")
    assert job.execute_in_process(instance=instance, run_config=QUIET).success
    CALLS.clear()
    outline = AssetKey(["chain", "outline"])
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[outline])
    assert sub.success and CALLS == {"outline": 1}
    assert _steps(instance, sub.run_id) == {"flujo_inputs", "outline"}
    assert _materialized(instance, sub.run_id) == {"outline"}


def test_a_recomputed_key_waits_for_the_check_of_the_loaded_values(instance: DagsterInstance) -> None:
    """`note` is not an asset, so selecting `report` computes it again (Dagster's rule); `facts` is loaded. When
    `facts` was never materialized, `flujo_inputs` fails the run before the note's step calls the model."""
    job = _defs(noted()).resolve_job_def("noted")
    report = AssetKey(["noted", "report"])
    never = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[report], raise_on_error=False)
    assert not never.success and CALLS == {}
    assert "needs key 'facts' from asset noted/facts, which has never been materialized" in _failure(
        instance, never.run_id
    )
    assert job.execute_in_process(instance=instance, run_config=QUIET).success
    CALLS.clear()
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[report])
    assert sub.success and CALLS == {"model": 2}  # the note and the report; not the facts
    assert _steps(instance, sub.run_id) == {"flujo_inputs", "note", "report", "flujo_context"}


def test_a_reexecuted_subset_loads_what_the_run_it_resumes_loaded(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker, log = tmp_path / "fail", tmp_path / "requests.log"
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(REQUEST_LOG, str(log))
    job = reconstructable(chain_job)
    config = {**QUIET, "ops": {"chain_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "b"}}}}}}}
    with execute_job(job, instance=instance, run_config=QUIET) as first:  # outline of topic a
        assert first.success
    marker.touch()
    with execute_job(job, instance=instance, run_config=QUIET, asset_selection=[REPORT]) as failed:
        assert not failed.success
        parent_id = failed.run_id
    marker.unlink()
    with execute_job(job, instance=instance, run_config=config) as later:  # a newer outline, of topic b
        assert later.success
    options = ReexecutionOptions.from_failure(parent_id, instance)
    with execute_job(job, instance=instance, reexecution_options=options) as resumed:
        assert resumed.success
        assert _materialized(instance, resumed.run_id) == {"report"}
    assert log.read_text().splitlines()[-1] == "report on outline of <facts about a>"


ROOT = Path(__file__).resolve().parents[1]


def _dg_launch(home: Path, *args: str) -> None:
    """`dg launch` in the example `dg` project, on the instance at `home` (PYTHONPATH only to this checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONPATH")}
    env |= {"DAGSTER_HOME": str(home), "PYTHONPATH": str(ROOT)}
    inputs = {"ops": {"dg_digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}}
    done = subprocess.run(
        [str(dg_executable()), "launch", *args, "--config-json", json.dumps(inputs)],
        cwd=ROOT / "examples" / "dg_digest",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_dg_launch_materializes_one_asset_of_a_pipeline(dagster_home: Path) -> None:
    _dg_launch(dagster_home, "--job", "dg_digest")
    _dg_launch(dagster_home, "--assets", "examples/dg_digest/report")
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        latest = instance.get_runs(limit=1)[0]
        assert latest.asset_selection == {AssetKey(["examples", "dg_digest", "report"])}
        assert _steps(instance, latest.run_id) == {"flujo_inputs", "report", "flujo_context"}  # no draft: no model
        assert _materialized(instance, latest.run_id) == {"report"}


def test_a_gate_inside_the_subset_asks_again_and_resumes_the_subset(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`briefed`: plan (asset `outline`) -> write -> review (gate) -> publish (asset `published`). Selecting
    `published` loads `outline`, writes the draft again and parks at the gate: the decision is about this run's
    draft. Its resume is a re-execution of the subset, which materializes `published` alone."""
    monkeypatch.setenv(APPROVAL_LOG, str(tmp_path / "requests.log"))
    job = reconstructable(briefed_job)
    inputs = {"ops": {"briefed_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}}}
    with execute_job(job, instance=instance, run_config=inputs) as first:
        assert first.success
    decide(first.run_id, verdict="approve", by="ana", instance=instance)
    resume(first.run_id, job=job, instance=instance)
    published = AssetKey(["briefed", "published"])
    with execute_job(job, instance=instance, run_config=inputs, asset_selection=[published]) as sub:
        assert sub.success
        parked = sub.run_id
    run = instance.get_run_by_id(parked)
    assert run is not None and run.tags["flujo/parked"] == "true"
    assert _steps(instance, parked) >= {"flujo_inputs", "write"} and "plan" not in _steps(instance, parked)
    assert _materialized(instance, parked) == set()
    decide(parked, verdict="approve", by="ana", instance=instance)
    resumed = resume(parked, job=job, instance=instance)
    assert _materialized(instance, resumed) == {"published"}
    assert "plan" not in _steps(instance, resumed)
