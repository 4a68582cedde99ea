"""Asset lineage follows the key flow across a Map (an op per element), a Loop, an approval gate and a Branch:
the asset graph the UI shows (GraphQL `assetNodes`, read from a code server like the webserver's) has exactly
the expected edges, and the pipeline runs end to end with review metadata on every producer kind."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance, execute_job, reconstructable
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from flujo_dagster.adapter.control.approvals import decide, resume
from tests.review_defs import lineage_job
from tests.test_asset_checks import evaluations
from tests.test_asset_review import inputs, materialized

DEFS_FILE = str(Path(__file__).with_name("review_defs.py"))
QUERY = """
{
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
  }
}
"""
EXPECTED_EDGES = {
    "lineage/items": set(),
    "lineage/doubled": {"lineage/items"},  # the Map's collect reads the fan-out over items
    "lineage/draft": {"lineage/doubled"},  # redraft in the loop reads doubled; the gate re-writes draft
    "lineage/verdict": {"lineage/draft"},  # the branch routes on the approved draft
    "lineage/report": {"lineage/draft", "lineage/verdict"},
    "lineage/final_context": {
        "lineage/items",
        "lineage/doubled",
        "lineage/draft",
        "lineage/verdict",
        "lineage/report",
    },
}


def test_asset_graph_in_graphql_has_the_expected_edges(instance: DagsterInstance) -> None:
    with define_out_of_process_context(DEFS_FILE, "lineage_defs", instance) as context:
        result = execute_dagster_graphql(context, QUERY)
    assert result.errors is None
    nodes = {"/".join(n["assetKey"]["path"]): n for n in result.data["assetNodes"]}
    edges = {key: {"/".join(d["path"]) for d in node["dependencyKeys"]} for key, node in nodes.items()}
    assert edges == EXPECTED_EDGES
    checks = {key: node["assetChecksOrError"]["checks"] for key, node in nodes.items()}
    assert checks == {key: [{"name": "flujo_type", "blocking": True}] for key in EXPECTED_EDGES}


def test_the_pipeline_runs_through_every_producer_kind(instance: DagsterInstance) -> None:
    job = reconstructable(lineage_job)
    with execute_job(job, instance=instance, run_config=inputs("lineage", "otters"), raise_on_error=False) as run:
        assert run.success  # parked at sign_off: a park is not a failure
        parked = run.run_id
    decide(parked, verdict="approve", by="alice", instance=instance)
    resumed = resume(parked, job=job, instance=instance)
    first, second = materialized(instance, parked), materialized(instance, resumed)
    assert set(first) == {"lineage/items", "lineage/doubled"}
    assert set(second) == {"lineage/draft", "lineage/verdict", "lineage/report", "lineage/final_context"}
    assert first["lineage/doubled"]["flujo/preview"].value == [0, 2, 4, 6, 8, 10]
    assert second["lineage/draft"]["flujo/preview"].value == "otters: 30 (1)"
    assert second["lineage/draft"]["flujo/approval/by"].value == "alice"
    assert second["lineage/verdict"]["flujo/preview"].value == "accepted"
    assert second["lineage/report"]["flujo/type"].value == "str"
    checked = {**evaluations(instance, parked), **evaluations(instance, resumed)}
    assert {key for key, (passed, _, _) in checked.items() if passed} == {(k, "flujo_type") for k in EXPECTED_EDGES}
