"""Re-execution from failure reuses the parent run's stored outputs: nothing completed runs again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterEventType, DagsterInstance, ReexecutionOptions, execute_job, reconstructable

from definitions.digest import Digest, digest
from flujo_dagster import PydanticJsonIOManager, load_final_context
from flujo_dagster.adapter.control.costs import run_costs
from tests.reexec_defs import FAIL_MARKER, REQUEST_LOG, flaky_digest_job

RUN_CONFIG: dict[str, Any] = {
    "ops": {"digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "agents"}}}}}}
}


def test_reexecution_from_failure_recomputes_only_what_failed(
    instance: DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker, log = tmp_path / "fail", tmp_path / "requests.log"
    marker.touch()
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(REQUEST_LOG, str(log))
    job = reconstructable(flaky_digest_job)
    with execute_job(job, instance=instance, run_config=RUN_CONFIG) as first:
        assert not first.success
        parent_id = first.run_id
    assert log.read_text().splitlines() == ["draft"]

    marker.unlink()
    options = ReexecutionOptions.from_failure(parent_id, instance)
    with execute_job(job, instance=instance, reexecution_options=options) as second:
        assert second.success
        rerun = {e.step_key for e in second.all_events if e.event_type == DagsterEventType.STEP_START}
        run_id = second.run_id
    assert rerun == {
        "digest_graph.critique",
        "digest_graph.report",
        "digest_graph.flujo_context",
        "digest_graph.flujo_context_check",
    }
    assert log.read_text().splitlines() == ["draft", "critique"]  # the draft's LLM call was not repeated

    root = PydanticJsonIOManager().root(instance.storage_directory())
    context = load_final_context(digest, run_id, instance=instance)
    assert isinstance(context, Digest)
    assert context.draft is not None and context.draft.startswith("This week in agents: 3 sources")
    assert context.critique is not None and context.critique.verdict == "publish"
    # the parent's draft was read from the parent run's storage, not recomputed into this run
    assert not PydanticJsonIOManager.output_path(root, run_id, "digest_graph.draft", "draft").exists()
    # costs: each agent call once, in the run that made it, across the parent and its re-execution
    calls = run_costs(run_id, instance=instance)
    assert [(c.step_path, c.run_id) for c in calls] == [
        ("digest > agent:draft", parent_id),
        ("digest > agent:critique", run_id),
    ]
    assert all(c.price_source == "offline" and c.cost_usd == 0 for c in calls)  # FREE: declared at zero
    assert run_costs(parent_id, instance=instance) == calls  # any run of the group gives the whole group
