"""Upstream assets as context keys: a plain Dagster asset, materialized first, is loaded by its own IO manager
into a typed context key of a pipeline (validated as the key's type), the asset graph shows the edge, matching
partitions load the matching partition, non-data `deps` show as edges, and validation refuses what cannot work."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest
from dagster import AssetKey, DagsterInstance, DailyPartitionsDefinition, Definitions, asset, materialize
from pydantic import BaseModel

from flujo_dagster import ConfigurationError, DailyPartitions, Pipeline, build_definitions, load_final_context, step

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class Order(BaseModel):
    id: int
    amount: float


class Sales(BaseModel):
    orders: list[Order]
    currency: str = "EUR"
    total: float | None = None
    report: str | None = None


@step
def total(orders: list[Order]) -> float:
    return sum(o.amount for o in orders)


@step
def report(total: float | None, currency: str) -> str:
    return f"{total or 0:.2f} {currency}"


@asset(key=["shop", "orders"])
def orders_asset() -> list[dict[str, object]]:
    return [{"id": 1, "amount": 2.5}, {"id": 2, "amount": 4.0}]


@asset(key=["raw", "events"])
def events_asset() -> int:
    return 1


def sales(**extra: object) -> Pipeline[Sales]:
    return Pipeline(
        "sales",
        context=Sales,
        steps=total >> report,
        assets=["total", "report"],
        upstream={"orders": AssetKey(["shop", "orders"])},
        **extra,  # type: ignore[arg-type]
    )


def test_a_pipeline_reads_a_plain_asset_as_a_typed_key(instance: DagsterInstance) -> None:
    assert materialize([orders_asset], instance=instance).success
    pipeline = sales()
    assert pipeline.input_keys() == () and "orders" not in pipeline.run_input_keys()
    assert "orders" in pipeline.initial_keys()
    defs = Definitions.merge(Definitions(assets=[orders_asset]), build_definitions(pipelines=[pipeline]))
    result = defs.resolve_job_def("sales").execute_in_process(instance=instance, run_config=QUIET)
    assert result.success
    final = load_final_context(pipeline, result.run_id, instance=instance)
    assert final.orders == [Order(id=1, amount=2.5), Order(id=2, amount=4.0)]
    assert final.report == "6.50 EUR"
    graph = defs.get_repository_def().asset_graph
    assert graph.get(AssetKey(["sales", "total"])).parent_keys == {AssetKey(["shop", "orders"])}
    assert graph.get(AssetKey(["sales", "report"])).parent_keys == {AssetKey(["sales", "total"])}
