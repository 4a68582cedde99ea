"""A subset run loads the values it does not produce from the materializations the instance proves: a run that
names a forged root run (or parent) cannot steer it to an older value, and a materialization reported by hand
(no run, no stored value) is not one it can load."""

from __future__ import annotations

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    reconstructable,
)
from dagster._core.execution.api import execute_run

from flujo_dagster import build_definitions
from tests.subset_defs import CALLS, RUNTIME, chain, chain_job

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
REPORT = AssetKey(["chain", "report"])
OUTLINE = AssetKey(["chain", "outline"])


def _topic(topic: str) -> dict[str, object]:
    return {**QUIET, "ops": {"chain_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": topic}}}}}}}


def test_a_forged_root_run_does_not_steer_a_subset_to_an_older_value(instance: DagsterInstance) -> None:
    defs = build_definitions(pipelines=[chain()], resources={"agent_runtime": RUNTIME})
    job = defs.resolve_job_def("chain")
    assert job.execute_in_process(instance=instance, run_config=_topic("a")).success
    between = instance.create_run_for_job(job_def=job, run_config=QUIET)  # any run made between the two
    assert job.execute_in_process(instance=instance, run_config=_topic("b")).success
    CALLS.clear()
    # a client names that run as root (and a parent the instance does not have) when it launches a subset
    run = instance.create_run_for_job(
        job_def=job,
        run_config=QUIET,
        asset_selection=frozenset({REPORT}),
        root_run_id=between.run_id,
        parent_run_id="0" * 8 + "-0000-0000-0000-" + "0" * 12,
    )
    result = execute_run(reconstructable(chain_job), run, instance)
    assert result.success
    value = defs.load_asset_value(REPORT, instance=instance)
    assert value == "<report on outline of <facts about b>>"  # the latest outline, not the forged root's


def test_a_hand_reported_materialization_is_not_loaded(instance: DagsterInstance) -> None:
    defs = build_definitions(pipelines=[chain()], resources={"agent_runtime": RUNTIME})
    job = defs.resolve_job_def("chain")
    assert job.execute_in_process(instance=instance, run_config=_topic("b")).success
    instance.report_runless_asset_event(AssetMaterialization(OUTLINE, metadata={"path": "/etc/passwd"}))
    sub = job.execute_in_process(instance=instance, run_config=QUIET, asset_selection=[REPORT])
    assert sub.success  # the hand report has no stored value: the latest stored one is loaded
    assert defs.load_asset_value(REPORT, instance=instance) == "<report on outline of <facts about b>>"
