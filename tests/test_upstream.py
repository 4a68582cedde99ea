"""Upstream assets as context keys: a plain Dagster asset, materialized first, is loaded by its own IO manager
into a typed context key of a pipeline (validated as the key's type), the asset graph shows the edge, matching
partitions load the matching partition, non-data `deps` show as edges, and validation refuses what cannot work."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterInvalidConfigError,
    DailyPartitionsDefinition,
    Definitions,
    ExecuteInProcessResult,
    asset,
    materialize,
)
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql
from pydantic import BaseModel

from flujo_dagster import (
    Approval,
    Branch,
    ConfigurationError,
    DailyPartitions,
    Group,
    Loop,
    Pipeline,
    RunInputsError,
    Schedule,
    build_definitions,
    load_final_context,
    run_pipeline,
    step,
    validate,
)
from flujo_dagster.adapter.compile.compiler import compile_pipeline
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.runtime.inputs import validate_inputs

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
ORDERS = AssetKey(["shop", "orders"])
EVENTS = AssetKey(["raw", "events"])


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


@asset(key=ORDERS)
def orders_asset() -> list[dict[str, object]]:
    return [{"id": 1, "amount": 2.5}, {"id": 2, "amount": 4.0}]


@asset(key=ORDERS)
def bad_orders_asset() -> list[dict[str, object]]:
    return [{"id": "one", "amount": 2.5}, {"amount": 4.0}]


@asset(key=EVENTS)
def events_asset() -> int:
    return 1


def sales(name: str = "sales", steps: object = None, **extra: object) -> Pipeline[Sales]:
    return Pipeline(
        name,
        context=Sales,
        steps=steps or total >> report,  # type: ignore[arg-type]
        assets=["total", "report"],
        upstream={"orders": ORDERS},
        **extra,  # type: ignore[arg-type]
    )


def failure_message(result: ExecuteInProcessResult) -> tuple[str, str]:
    """The failed step and its error message (the `Failure`'s description)."""
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
                error = error.cause  # the step's own error, not Dagster's wrapper around it
            assert error is not None and event.step_key is not None
            return event.step_key, error.message
    raise AssertionError("no step failed")


# --- loading, typed ----------------------------------------------------------------------------------------------


def test_a_pipeline_reads_a_plain_asset_as_a_typed_key(instance: DagsterInstance) -> None:
    assert materialize([orders_asset], instance=instance).success
    pipeline = sales()
    defs = Definitions.merge(Definitions(assets=[orders_asset]), build_definitions(pipelines=[pipeline]))
    result = defs.resolve_job_def("sales").execute_in_process(instance=instance, run_config=QUIET)
    assert result.success
    final = load_final_context(pipeline, result.run_id, instance=instance)
    assert final.orders == [Order(id=1, amount=2.5), Order(id=2, amount=4.0)]
    assert (final.total, final.report) == (6.5, "6.50 EUR")


def test_the_asset_graph_shows_the_upstream_edge() -> None:
    pipeline = sales(context_asset=True)  # the final context's asset derives from the upstream asset too
    defs = Definitions.merge(Definitions(assets=[orders_asset]), build_definitions(pipelines=[pipeline]))
    graph = defs.get_repository_def().asset_graph
    assert graph.get(AssetKey(["sales", "total"])).parent_keys == {ORDERS}
    assert graph.get(AssetKey(["sales", "report"])).parent_keys == {AssetKey(["sales", "total"])}
    final = graph.get(AssetKey(["sales", "final_context"])).parent_keys
    assert final == {ORDERS, AssetKey(["sales", "total"]), AssetKey(["sales", "report"])}
    assert graph.get(ORDERS).child_keys == {AssetKey(["sales", "total"]), AssetKey(["sales", "final_context"])}


UPSTREAM_DEFS = str(Path(__file__).with_name("upstream_defs.py"))
EDGES_QUERY = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"


def test_the_ui_shows_the_upstream_and_deps_edges(instance: DagsterInstance) -> None:
    """The asset graph as the webserver serves it (GraphQL, from a code server)."""
    with define_out_of_process_context(UPSTREAM_DEFS, "upstream_defs", instance) as context:
        result = execute_dagster_graphql(context, EDGES_QUERY)
    assert result.errors is None
    edges = {
        "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
        for n in result.data["assetNodes"]
    }
    assert edges == {
        "warehouse/rows": set(),
        "raw/load": set(),
        "counted/count": {"warehouse/rows", "raw/load"},
        "counted/label": {"counted/count", "raw/load"},
        "counted/final_context": {"warehouse/rows", "raw/load", "counted/count", "counted/label"},
    }


def test_an_upstream_key_is_no_run_input(instance: DagsterInstance) -> None:
    pipeline = sales()
    assert pipeline.input_keys() == ()
    assert pipeline.run_input_keys() == ("currency", "total", "report")
    assert pipeline.initial_keys() == ("orders", "currency", "total", "report")
    compiled = compile_pipeline(pipeline, translator=FlujoDagsterTranslator())
    inputs_op = compiled.graph.node_named("flujo_inputs").definition
    schema = inputs_op.config_schema.config_type.fields["inputs"].config_type  # type: ignore[union-attr]
    assert set(schema.fields) == {"currency", "total", "report"}  # the Launchpad does not ask for it
    upstream_said = (
        r"orders: not an input of this pipeline: it is read from the upstream asset 'shop/orders'; materialize"
    )
    with pytest.raises(RunInputsError, match=upstream_said):
        validate_inputs(pipeline, {"orders": [{"id": 1, "amount": 1.0}]})
    assert materialize([orders_asset], instance=instance).success
    defs = Definitions.merge(Definitions(assets=[orders_asset]), build_definitions(pipelines=[pipeline]))
    given = compiled.inputs_run_config({"orders": []}) | QUIET
    with pytest.raises(DagsterInvalidConfigError, match=r'unexpected config entry "orders"'):  # refused at launch
        defs.resolve_job_def("sales").execute_in_process(instance=instance, run_config=given)
    assert [r for r in instance.get_runs() if r.job_name == "sales"] == []  # no run was created
    scheduled = sales(schedule=Schedule(cron="0 6 * * *", inputs={"orders": []}))
    assert [(f.code, f.message) for f in validate(scheduled).findings] == [
        ("SCHED-002", "the schedule's inputs name ['orders'], which are not run inputs of Sales.")
    ]


def test_a_wrong_typed_upstream_value_fails_the_step_naming_pipeline_key_and_asset(instance: DagsterInstance) -> None:
    assert materialize([bad_orders_asset], instance=instance).success
    defs = Definitions.merge(Definitions(assets=[bad_orders_asset]), build_definitions(pipelines=[sales()]))
    result = defs.resolve_job_def("sales").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
    assert not result.success
    step_key, message = failure_message(result)
    assert step_key == "sales_graph.flujo_upstream_orders"
    assert message.startswith(
        "dagster._core.definitions.events.Failure: pipeline 'sales': upstream key 'orders' reads asset "
        "'shop/orders', whose value is not a list[tests.test_upstream.Order] "
        "(2 problem(s)):\n  - 0.id: Input should be a valid integer, unable to parse string as an integer "
        "(int_parsing)\n  - 1.id: Field required (missing)\n"
    )
    materialized = {e.asset_key for e in result.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION}
    assert materialized == set()  # no step ran on the bad value


def test_run_pipeline_loads_the_upstream_asset_with_the_default_io_manager(instance: DagsterInstance) -> None:
    assert materialize([orders_asset], instance=instance).success
    run = run_pipeline(sales(), instance=instance, log_level="CRITICAL")
    assert run.context.report == "6.50 EUR"


class Flow(BaseModel):
    orders: list[Order]
    n: int = 0
    big: bool | None = None
    label: str | None = None


@step(output_keys=["n"])
def count(orders: list[Order], n: int) -> int:
    return n + len(orders)


@step
def big(n: int) -> bool:
    return n > 2


@step(name="large", output_keys=["label"])
def large(orders: list[Order]) -> str:
    return f"large {len(orders)}"


@step(name="small", output_keys=["label"])
def small(orders: list[Order]) -> str:
    return f"small {len(orders)}"


def test_upstream_keys_flow_through_control_flow_and_gates(instance: DagsterInstance) -> None:
    again = step(name="again", output_keys=["n"])(lambda orders, n: n + len(orders))
    pipeline = Pipeline(
        "flow",
        context=Flow,
        steps=[
            Loop("grow", body=[count], until=lambda n: n >= 4, max_iterations=3),
            big,
            Branch("route", on="big", cases={True: [large], False: [small]}),
            Group("tail", steps=[again], inline=True),
        ],
        assets=["label", "n"],
        upstream={"orders": ORDERS},
    )
    assert materialize([orders_asset], instance=instance).success
    defs = Definitions.merge(Definitions(assets=[orders_asset]), build_definitions(pipelines=[pipeline]))
    result = defs.resolve_job_def("flow").execute_in_process(instance=instance, run_config=QUIET)
    final = load_final_context(pipeline, result.run_id, instance=instance)
    assert (final.n, final.big, final.label) == (6, True, "large 2")  # the loop ran twice, the inline group once
    graph = defs.get_repository_def().asset_graph
    assert graph.get(AssetKey(["flow", "label"])).parent_keys == {ORDERS}
    assert graph.get(AssetKey(["flow", "n"])).parent_keys == {ORDERS}
    # an approval gate may show (and let a reviewer edit) an upstream key: it passes the value on
    gated = sales("gated", steps=[Approval("review", show=["orders"]), total, report])
    assert validate(gated).ok, str(validate(gated))
    defs = Definitions.merge(Definitions(assets=[orders_asset]), build_definitions(pipelines=[gated]))
    assert defs.get_repository_def().asset_graph.get(AssetKey(["gated", "total"])).parent_keys == {ORDERS}


# --- partitions --------------------------------------------------------------------------------------------------


class DailySales(BaseModel):
    day: date
    orders: list[Order]
    total: float | None = None


DAILY = DailyPartitionsDefinition(start_date="2026-11-01")


@asset(key=ORDERS, partitions_def=DAILY)
def daily_orders(context) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    day = int(context.partition_key[-2:])
    return [{"id": day, "amount": float(day)}]


def test_matching_daily_partitions_load_the_same_day(instance: DagsterInstance) -> None:
    for day in ("2026-11-01", "2026-11-02"):
        assert materialize([daily_orders], instance=instance, partition_key=day).success
    pipeline = Pipeline(
        "daily_sales",
        context=DailySales,
        steps=[total],
        assets=["total"],
        upstream={"orders": ORDERS},
        partitions=DailyPartitions(start="2026-11-01", input_key="day"),
    )
    defs = Definitions.merge(Definitions(assets=[daily_orders]), build_definitions(pipelines=[pipeline]))
    job = defs.resolve_job_def("daily_sales")
    result = job.execute_in_process(instance=instance, run_config=QUIET, partition_key="2026-11-02")
    assert result.success
    final = load_final_context(pipeline, result.run_id, instance=instance)
    assert (final.day, final.orders, final.total) == (date(2026, 11, 2), [Order(id=2, amount=2.0)], 2.0)


# --- deps --------------------------------------------------------------------------------------------------------


def test_deps_are_edges_that_load_nothing(instance: DagsterInstance) -> None:
    pipeline = sales(deps=[EVENTS], context_asset=True)
    assert pipeline.deps == (("raw", "events"),)
    defs = Definitions.merge(Definitions(assets=[orders_asset, events_asset]), build_definitions(pipelines=[pipeline]))
    graph = defs.get_repository_def().asset_graph
    for key in ("total", "report", "final_context"):
        assert EVENTS in graph.get(AssetKey(["sales", key])).parent_keys
    assert materialize([orders_asset], instance=instance).success  # the dep itself is never loaded
    assert defs.resolve_job_def("sales").execute_in_process(instance=instance, run_config=QUIET).success


# --- the DSL -----------------------------------------------------------------------------------------------------


def test_asset_keys_are_kept_as_paths_by_composition_and_replace() -> None:
    pipeline = sales(deps=["raw/events", ("a", "b")])
    assert dict(pipeline.upstream) == {"orders": ("shop", "orders")}
    assert pipeline.deps == (("raw", "events"), ("a", "b"))
    with pytest.raises(TypeError):
        pipeline.upstream["x"] = ("y",)  # type: ignore[index]
    assert hash(pipeline) == hash(dataclasses.replace(pipeline))  # pipelines stay hashable
    for derived in (pipeline >> report, dataclasses.replace(pipeline, name="other"), pipeline >> sales(deps=[EVENTS])):
        assert dict(derived.upstream) == {"orders": ("shop", "orders")}
        assert derived.deps == (("raw", "events"), ("a", "b"))
    other = Pipeline("o", context=Sales, steps=[total], upstream={"orders": "elsewhere/orders"})
    with pytest.raises(ConfigurationError, match=r"upstream key 'orders' is loaded from 'shop/orders' in one"):
        pipeline >> other


@pytest.mark.parametrize("bad", [3, "", "a//b", ["a", ""], [1, 2]])
def test_a_value_that_is_no_asset_key_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^Pipeline 'sales': upstream key 'orders' names the asset"):
        Pipeline("sales", context=Sales, steps=[total], upstream={"orders": bad})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match=r"^Pipeline 'sales': deps names the asset"):
        Pipeline("sales", context=Sales, steps=[total], deps=[bad])  # type: ignore[list-item]


# --- validation --------------------------------------------------------------------------------------------------


class Odd(BaseModel):
    orders: list[Order]
    defaulted: list[Order] = []
    fn: Callable  # type: ignore[type-arg]
    total: float | None = None


def findings(pipeline: Pipeline) -> list[tuple[str, str, str]]:
    return [(f.code, f.path, f.message) for f in validate(pipeline).findings]


def test_each_upstream_rule() -> None:
    def odd(name: str, **extra: object) -> Pipeline:
        return Pipeline(name, context=Odd, steps=[total], assets=["total"], **extra)  # type: ignore[arg-type]

    assert findings(odd("unknown", upstream={"order": ORDERS})) == [
        ("UPSTREAM-001", "unknown", "upstream key 'order' (asset 'shop/orders') is not a field of Odd."),
    ]
    assert findings(odd("written", upstream={"orders": ORDERS, "total": "x/total"}))[0] == (
        "UPSTREAM-002",
        "written > step:total",
        "writes key 'total', which is read from upstream asset 'x/total'; a key has one source.",
    )
    assert [f[:2] for f in findings(odd("dflt", upstream={"orders": ORDERS, "defaulted": "x/d"}))] == [
        ("UPSTREAM-003", "dflt > key:defaulted")
    ]
    code, path, message = findings(odd("fn", upstream={"orders": ORDERS, "fn": "x/fn"}))[0]
    assert (code, path) == ("UPSTREAM-004", "fn > key:fn")
    assert "pydantic cannot validate a value as that type (PydanticInvalidForJsonSchema" in message
    no_assets = Pipeline("plain", context=Odd, steps=[total], upstream={"orders": ORDERS})
    assert [f[0] for f in findings(no_assets)] == ["UPSTREAM-005"]
    assert "reads upstream key 'orders' (asset 'shop/orders') but declares no asset" in findings(no_assets)[0][2]
    assert [f[0] for f in findings(Pipeline("plain", context=Sales, steps=[total], deps=[EVENTS]))] == ["UPSTREAM-005"]
    assert [f[2] for f in findings(odd("twice", upstream={"orders": ORDERS}, deps=[ORDERS, "twice/total"]))] == [
        "deps names asset 'shop/orders', which upstream key 'orders' names too.",
        "deps names asset 'twice/total', which this pipeline produces (a cycle).",
    ]
    kept = Pipeline("kept", context=Odd, steps=[total], assets=["total", "orders"], upstream={"orders": ORDERS})
    assert [f[:2] for f in findings(kept)] == [("UPSTREAM-006", "kept > key:orders")]
    with pytest.raises(ConfigurationError, match=r"\[UPSTREAM-005\] error at plain"):
        build_definitions(pipelines=[no_assets])


def test_a_partition_key_field_cannot_be_upstream() -> None:
    pipeline = Pipeline(
        "parts",
        context=DailySales,
        steps=[total],
        assets=["total"],
        upstream={"orders": ORDERS, "day": "x/day"},
        partitions=DailyPartitions(start="2026-11-01", input_key="day"),
    )
    assert ("UPSTREAM-003", "parts > key:day") in [f[:2] for f in findings(pipeline)]


class _Opaque:
    """An object JSON cannot hold."""


class _Blobs(BaseModel):
    blob: dict[str, Any]
    counts: dict[str, int]
    n: int | None = None


@asset(key=["ext", "blob"])
def _blob_asset() -> dict[str, object]:
    return {"a": _Opaque()}


@asset(key=["ext", "counts"])
def _counts_asset() -> dict[str, object]:
    return {"k" * 100_000: "not a number"}  # a hostile key: the message must not carry it whole


def test_an_upstream_value_json_cannot_hold_or_a_huge_one_fails_clearly_and_bounded(instance: DagsterInstance) -> None:
    @step(output_keys=["n"])
    def count(blob: dict[str, Any], counts: dict[str, int]) -> int:
        return len(blob) + len(counts)

    upstream = {"blob": AssetKey(["ext", "blob"]), "counts": AssetKey(["ext", "counts"])}
    pipeline = Pipeline("blobs", context=_Blobs, steps=[count], assets=["n"], upstream=upstream)
    assert materialize([_blob_asset, _counts_asset], instance=instance).success
    defs = Definitions.merge(Definitions(assets=[_blob_asset, _counts_asset]), build_definitions(pipelines=[pipeline]))
    result = defs.resolve_job_def("blobs").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False)
    failures = {
        e.step_key: e.step_failure_data.error
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_FAILURE and e.step_failure_data.error is not None
    }
    blob, counts = failures["blobs_graph.flujo_upstream_blob"], failures["blobs_graph.flujo_upstream_counts"]
    assert blob.cls_name == counts.cls_name == "Failure"  # ours, not retried: never a generic step error
    assert "upstream key 'blob' reads asset 'ext/blob', whose value is not a dict[str, Any]" in blob.message
    assert "PydanticSerializationError" in blob.message
    assert "upstream key 'counts' reads asset 'ext/counts'" in counts.message
    assert len(counts.message) < 2_000 and "k" * 201 not in counts.message  # each part cut at 200 characters
