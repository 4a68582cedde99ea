"""The example pipeline runs end to end through run_pipeline on a persistent instance."""

from __future__ import annotations

from dagster import DagsterInstance

from definitions.digest import Digest, digest
from definitions.offline import offline_model
from flujo_dagster import AgentRuntime, run_pipeline


def test_digest_runs_offline(instance: DagsterInstance) -> None:
    result = run_pipeline(
        digest, {"topic": "agents"}, instance=instance, resources={"agent_runtime": AgentRuntime(model=offline_model())}
    )
    assert result.success, result.error
    assert isinstance(result.context, Digest)
    assert result.context.report is not None and result.context.report.startswith("# Digest: agents")
    assert [c.model_source for c in result.agent_calls] == ["offline", "offline"]
