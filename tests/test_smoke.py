"""The example pipeline runs end to end through run_pipeline on a persistent instance."""

from __future__ import annotations

from dagster import DagsterInstance

from definitions.digest import Digest, digest
from definitions.offline import offline_runtime
from definitions.review import review
from flujo_dagster import run_pipeline


def test_digest_runs_offline(instance: DagsterInstance) -> None:
    result = run_pipeline(
        digest, {"topic": "agents"}, instance=instance, resources={"agent_runtime": offline_runtime()}
    )
    assert result.success, result.error
    assert isinstance(result.context, Digest)
    assert result.context.report is not None and result.context.report.startswith("# Digest: agents")
    assert [c.model_source for c in result.agent_calls] == ["offline", "offline"]


def test_agent_calls_inside_inline_ops_are_reported(instance: DagsterInstance) -> None:
    result = run_pipeline(
        review, {"topic": "agents"}, instance=instance, resources={"agent_runtime": offline_runtime()}
    )
    assert result.success, result.error
    assert [(c.step_path, c.model_source, c.requests) for c in result.agent_calls] == [
        ("reviewed_digest > loop:refine > i1 > agent:draft", "offline", 1),
        ("reviewed_digest > loop:refine > i1 > agent:critique", "offline", 1),
        ("reviewed_digest > parallel:extras > title > agent:title", "offline", 1),
    ]
    assert all(c.model == "function:offline-digest" and c.input_tokens > 0 for c in result.agent_calls)
