"""A pipeline as a Dagster citizen, under a real `dagster dev` (webserver, daemon, code server), checked through
GraphQL as the UI sees it: a plain `@asset` (`orders`) is materialized, then the `orders_briefing` pipeline reads
it as an upstream asset, totals it with a resource and briefs with an agent whose tool uses the same resource.

Checked: the lineage edge from the plain asset, the typed input config schema with its descriptions, a
Launchpad-invalid input refused before launch (no run is created), the kinds and owners of the pipeline's assets,
and the run's cost tags, written when it ended."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterRunStatus, RunsFilter

from definitions.orders import Briefing, orders_briefing
from flujo_dagster import load_final_context
from flujo_dagster.names import RUN_CALLS_TAG, RUN_COST_TAG, RUN_TOKENS_TAG
from tests.dagster_dev import DagsterDev, DagsterDevError, dagster_dev

JOB = "orders_briefing"


def _inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The run config of the briefing's inputs, at the path docs/concepts.md gives for a pipeline with assets."""
    return {"ops": {f"{JOB}_graph": {"ops": {"flujo_inputs": {"config": {"inputs": inputs}}}}}}


ASSET_NODES = """
query {
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    kinds
    owners { __typename ... on UserAssetOwner { email } ... on TeamAssetOwner { team } }
  }
}
"""
CONFIG_TYPES = """
query Schema($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector) {
    __typename
    ... on RunConfigSchema {
      allConfigTypes {
        key
        ... on CompositeConfigType { fields { name description isRequired defaultValueAsJson configTypeKey } }
      }
    }
  }
}
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
  }
}
"""


def _selector(dev: DagsterDev, job: str) -> dict[str, Any]:
    return {"repositoryLocationName": dev.location, "repositoryName": "__repository__", "pipelineName": job}


def _launch(dev: DagsterDev, job: str, run_config: dict[str, Any], assets: list[list[str]] | None = None) -> Any:
    selector: dict[str, Any] = {**_selector(dev, job)}
    selector["jobName"] = selector.pop("pipelineName")
    if assets is not None:
        selector["assetSelection"] = [{"path": path} for path in assets]
    params = {"selector": selector, "runConfigData": run_config}
    return dev.server.graphql(LAUNCH, {"params": params})["launchRun"]


def _materialize_orders(dev: DagsterDev) -> None:
    launched = _launch(dev, "__ASSET_JOB", {}, assets=[["orders"]])
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run = dev.wait_finished(launched["run"]["runId"], timeout_s=120)
    assert run.status == DagsterRunStatus.SUCCESS, dev.log_tail()


def _input_fields(dev: DagsterDev) -> dict[str, dict[str, Any]]:
    """The fields of the config type that holds the briefing's inputs (the one with both `team` and `top`)."""
    found = dev.server.graphql(CONFIG_TYPES, {"selector": _selector(dev, JOB)})["runConfigSchemaOrError"]
    assert found["__typename"] == "RunConfigSchema", found
    for config_type in found["allConfigTypes"]:
        fields = {f["name"]: f for f in config_type.get("fields") or []}
        if {"team", "top"} <= fields.keys():
            return fields
    raise AssertionError(f"no config type holds the inputs team and top: {found['allConfigTypes']}")


def _cost_tags(dev: DagsterDev, run_id: str, timeout_s: float = 60) -> dict[str, str]:
    """The run's cost tags, once the daemon's sensor has written them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = dev.instance.get_run_by_id(run_id)
        if run is not None and RUN_COST_TAG in run.tags:
            return {k: run.tags[k] for k in (RUN_COST_TAG, RUN_TOKENS_TAG, RUN_CALLS_TAG)}
        time.sleep(0.25)
    raise DagsterDevError(f"run {run_id} got no {RUN_COST_TAG} tag within {timeout_s} s:\n{dev.log_tail()}")


def test_a_pipeline_reads_a_plain_asset_under_dagster_dev(tmp_path: Path) -> None:
    with dagster_dev(tmp_path / "home", interval_s=1) as dev:
        nodes = {tuple(n["assetKey"]["path"]): n for n in dev.server.graphql(ASSET_NODES)["assetNodes"]}
        totals, briefing = nodes[(JOB, "totals")], nodes[(JOB, "briefing")]
        assert {"path": ["orders"]} in totals["dependencyKeys"]  # the lineage edge from the plain asset
        assert {"pydantic-ai", "openai"} <= set(briefing["kinds"])
        assert {"__typename": "TeamAssetOwner", "team": "sales"} in briefing["owners"]

        fields = _input_fields(dev)
        assert fields["team"]["description"] == "Who reads the briefing, e.g. 'EMEA sales'."
        assert fields["team"]["isRequired"] and fields["team"]["configTypeKey"] == "String"
        assert fields["top"]["description"] == "How many customers the briefing names at most."
        assert not fields["top"]["isRequired"] and fields["top"]["configTypeKey"] == "Int"
        assert fields["top"]["defaultValueAsJson"] == "3"
        assert "orders" not in fields  # an upstream asset is not an input

        before = len(dev.instance.get_runs())
        refused = _launch(dev, JOB, _inputs({"team": "EMEA sales", "top": "many"}))
        assert refused["__typename"] == "RunConfigValidationInvalid", refused
        assert any("top" in e["message"] for e in refused["errors"]), refused
        assert len(dev.instance.get_runs()) == before  # refused before launch: no run

        _materialize_orders(dev)
        launched = _launch(dev, JOB, _inputs({"team": "EMEA sales", "top": 2}))
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        run = dev.wait_finished(run_id, timeout_s=120)
        assert run.status == DagsterRunStatus.SUCCESS, dev.log_tail()

        final = load_final_context(orders_briefing, run_id, instance=dev.instance)
        assert isinstance(final, Briefing)
        assert [t.name for t in final.totals] == ["Northwind Traders", "Blue Heron Cafe"]  # the resource named them
        assert final.briefing is not None and "Northwind Traders (enterprise)" in final.briefing  # the agent's tool

        tags = _cost_tags(dev, run_id)
        assert float(tags[RUN_COST_TAG]) > 0 and int(tags[RUN_TOKENS_TAG]) > 0
        assert int(tags[RUN_CALLS_TAG]) == 1  # one agent step; its tool call made two requests, one call
        materialized = dev.instance.get_runs(filters=RunsFilter(tags={RUN_COST_TAG: tags[RUN_COST_TAG]}))
        assert run_id in {r.run_id for r in materialized}  # the Runs list filters by the tag
        assert dev.instance.get_latest_materialization_event(AssetKey([JOB, "briefing"])) is not None
