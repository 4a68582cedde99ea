"""Dagster's parts in steps: resources (by annotation and by key) and the execution context in function steps,
and an agent step's pydantic-ai `deps` built from keys and resources, reaching the agent's tools; expanded
into ops and inline alike, with key flow and validation ignoring what Dagster fills."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    DagsterInstance,
    DagsterInvalidDefinitionError,
    Definitions,
    OpExecutionContext,
    ResourceParam,
)
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import (
    AgentRuntime,
    Budget,
    ConfigurationError,
    Group,
    Pipeline,
    Price,
    agent_step,
    build_definitions,
    run_pipeline,
    step,
)
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.dsl.injection import Injection, classify
from flujo_dagster.dsl.keys import resolve_keys, step_injections
from flujo_dagster.pricing import USD_NANOS
from flujo_dagster.validation import validate


class Warehouse(ConfigurableResource):  # type: ignore[misc]
    """A stand-in for a database resource a deployment configures."""

    schema_name: str

    def rows(self, day: str) -> list[str]:
        return [f"{self.schema_name}.orders:{day}:{i}" for i in range(3)]


class Customers(ConfigurableResource):  # type: ignore[misc]
    """A stand-in for an API client the agent's tool calls."""

    names: dict[str, str]

    def lookup(self, customer_id: str) -> str:
        return self.names[customer_id]


class Orders(BaseModel):
    day: str
    rows: list[str] = []
    tally: str = ""
    run_id: str = ""
    summary: str = ""


@step
def rows(day: str, warehouse: Warehouse) -> list[str]:
    return warehouse.rows(day)


@step(resources={"db": "warehouse"})
def tally(rows: list[str], db) -> str:  # type: ignore[no-untyped-def]
    return f"{db.schema_name}:{len(rows)}"


@step
def run_id(context: OpExecutionContext) -> str:
    return context.run_id


RESOURCES: dict[str, object] = {"warehouse": Warehouse(schema_name="dbt")}


def orders(name: str, *, inline: str) -> Pipeline:
    """`expanded`: one op per step; `group`: the steps in one inline Group; `steps`: each step inline=True."""
    steps: list[Any] = [rows, tally, run_id]
    if inline == "group":
        steps = [Group("load", steps=steps, inline=True)]
    elif inline == "steps":
        steps = [step(s.fn, inline=True, resources=dict(s.resources)) for s in steps]  # type: ignore[attr-defined]
    return Pipeline(name, context=Orders, steps=steps)


@pytest.mark.parametrize("inline", ["expanded", "group", "steps"])
def test_function_steps_get_resources_and_the_op_context(instance: DagsterInstance, inline: str) -> None:
    result = run_pipeline(
        orders("orders", inline=inline), {"day": "2026-12-05"}, instance=instance, resources=RESOURCES
    )
    context = result.context
    assert context.rows == [f"dbt.orders:2026-12-05:{i}" for i in range(3)]  # by annotation
    assert context.tally == "dbt:3"  # by key, under another parameter name
    assert context.run_id == result.run_id  # the op's own context


def test_injected_parameters_are_not_keys() -> None:
    pipeline = orders("orders", inline="expanded")
    assert resolve_keys(rows, pipeline.fields).reads == ("day",)
    assert resolve_keys(tally, pipeline.fields).reads == ("rows",)
    assert resolve_keys(run_id, pipeline.fields).reads == ()
    assert step_injections(tally) == {"db": Injection(resource_key="warehouse")}
    assert not validate(pipeline).findings


def test_a_parameter_that_is_no_key_resource_or_context_is_still_reported() -> None:
    @step
    def tally(rows: list[str], bogus: str) -> str:
        return bogus

    report = validate(Pipeline("orders", context=Orders, steps=[rows, tally]))
    assert [(f.code, "bogus" in f.message) for f in report.findings] == [("V-CTX2", True)]


def test_classification_is_total_and_follows_dagsters_rules() -> None:
    assert classify(Warehouse) == "resource"
    assert classify(ResourceParam[dict[str, str]]) == "resource"
    assert classify(OpExecutionContext) == "op"
    assert classify(AssetExecutionContext) == "asset"
    for odd in (str, list[str], "Warehouse", None, 3, dict[str, Warehouse], BaseModel, [1]):
        assert classify(odd) is None


def test_a_missing_resource_stops_the_definitions_from_loading() -> None:
    defs = build_definitions(pipelines=[orders("orders", inline="group")])
    with pytest.raises(DagsterInvalidDefinitionError, match="warehouse"):
        Definitions.validate_loadable(defs)


def test_the_asset_context_in_a_pipeline_with_assets(instance: DagsterInstance) -> None:
    @step
    def tally(context: AssetExecutionContext) -> str:
        return ",".join(sorted(k.to_user_string() for k in context.assets_def.keys))

    @step
    def run_id(context: AssetExecutionContext) -> str:  # not an asset itself: its op is in the graph-backed asset
        return context.run.run_id

    with_assets = Pipeline("counted", context=Orders, steps=[tally, run_id], assets=["tally"])
    result = run_pipeline(with_assets, {"day": "d"}, instance=instance)
    assert "counted/tally" in result.context.tally.split(",")
    assert result.context.run_id == result.run_id
    without = Pipeline("uncounted", context=Orders, steps=[tally])
    with pytest.raises(ConfigurationError, match=r"V-INJ.*AssetExecutionContext.*OpExecutionContext"):
        run_pipeline(without, {"day": "d"}, instance=instance)


# Agent deps: the tool looks a customer up through the deps; the model first calls it, then answers.


@dataclass
class Lookup:
    customers: Customers
    day: str


support = Agent("openai:gpt-5-mini", deps_type=Lookup, defer_model_check=True)


@support.tool
def customer(ctx: RunContext[Lookup], customer_id: str) -> str:
    """The customer's name."""
    return f"{ctx.deps.customers.lookup(customer_id)} ({ctx.deps.day})"


def lookup(day: str, customers: Customers) -> Lookup:
    return Lookup(customers=customers, day=day)


async def lookup_by_key(day: str, client) -> Lookup:  # type: ignore[no-untyped-def]
    """The same deps, async, with the resource declared by key (`resources={"client": "customers"}`)."""
    return Lookup(customers=client, day=day)


async def tool_then_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returned = [p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, ToolReturnPart)]
    if not returned:
        return ModelResponse(
            parts=[ToolCallPart("customer", {"customer_id": "c7"})],
            usage=RequestUsage(input_tokens=100, output_tokens=10),
        )
    return ModelResponse(
        parts=[TextPart(f"orders of {returned[0]}")], usage=RequestUsage(input_tokens=150, output_tokens=20)
    )


PRICE = Price(input_per_mtok=1_000, output_per_mtok=2_000)  # $0.001 per input token, $0.002 per output token
COST = Decimal("0.001") * 250 + Decimal("0.002") * 30


def summarised(name: str, *, inline: bool, budget: Budget | None = None, by_key: bool = False) -> Pipeline:
    summary = agent_step(
        "summary",
        agent=support,
        prompt="Summarise {rows}",
        deps=lookup_by_key if by_key else lookup,
        resources={"client": "customers"} if by_key else None,
        model_settings={"max_tokens": 500},
        inline=inline,
    )
    return Pipeline(name, context=Orders, steps=[rows, summary], budget=budget)


def agent_resources(**extra: object) -> dict[str, object]:
    runtime = AgentRuntime(
        model=FunctionModel(tool_then_answer, model_name="support"), prices={"function:support": PRICE}
    )
    return {**RESOURCES, "customers": Customers(names={"c7": "Ada"}), "agent_runtime": runtime, **extra}


@pytest.mark.parametrize(("inline", "by_key"), [(False, False), (True, False), (True, True)])
def test_agent_deps_reach_the_tools_and_tool_calls_count(instance: DagsterInstance, inline: bool, by_key: bool) -> None:
    pipeline = summarised("support", inline=inline, by_key=by_key)
    assert resolve_keys(pipeline.steps[1], pipeline.fields).reads == ("rows", "day")  # the deps' key is read
    result = run_pipeline(pipeline, {"day": "2026-12-05"}, instance=instance, resources=agent_resources())
    assert result.context.summary == "orders of Ada (2026-12-05)"
    (call,) = result.agent_calls
    assert (call.requests, call.input_tokens, call.output_tokens) == (2, 250, 30)
    assert call.cost_usd == COST


def test_a_budget_reserves_every_request_of_a_tool_calling_agent(instance: DagsterInstance) -> None:
    ledger = InstanceLedger().for_instance(instance)
    pipeline = summarised("support_budgeted", inline=False, budget=Budget(max_cost_usd=Decimal("10")))
    resources = agent_resources(budget_ledger=ledger)
    result = run_pipeline(pipeline, {"day": "2026-12-05"}, instance=instance, resources=resources)
    assert result.context.summary == "orders of Ada (2026-12-05)"
    entries = ledger.entries(run_id=result.run_id)
    assert [e.state for e in entries] == ["reconciled", "reconciled"]  # one reservation per model request
    assert [e.actual.tokens if e.actual else None for e in entries] == [110, 170]
    assert sum(e.actual.usd_nanos for e in entries if e.actual) == int(COST * USD_NANOS)
    (call,) = result.agent_calls
    assert (call.requests, call.cost_usd) == (2, COST)


def test_a_missing_deps_resource_stops_the_definitions_from_loading() -> None:
    defs = build_definitions(pipelines=[summarised("support", inline=True)], resources=RESOURCES)
    with pytest.raises(DagsterInvalidDefinitionError, match="customers"):
        Definitions.validate_loadable(defs)


def test_misdeclared_injections_are_reported() -> None:
    @step(resources={"dbb": "warehouse"})
    def tally(rows: list[str], db: str) -> str:
        return db

    @step
    def run_id(context: AssetExecutionContext) -> str:
        return context.run.run_id

    undeclared = agent_step("summary", agent=support, prompt="{rows}", resources=["customers"])
    report = validate(Pipeline("orders", context=Orders, steps=[rows, tally, run_id, undeclared]))
    assert [str(f) for f in report.findings if f.code == "V-INJ"] == [
        "[V-INJ] error at orders > step:tally: resources= maps parameter 'dbb' to resource 'warehouse', but tally "
        "has no parameter 'dbb'. Hint: name one of its parameters (db, rows)",
        "[V-INJ] error at orders > step:run_id: parameter 'context' asks for an AssetExecutionContext, but the "
        "pipeline has no assets, and Dagster gives one only to ops that are part of an asset. Hint: annotate it "
        "dagster.OpExecutionContext, or give the pipeline assets=[...]",
        "[V-INJ] error at orders > agent:summary: resources= names customers, but the step has no deps= to receive "
        "them. Hint: give the agent step deps=<a function taking those parameters>, or drop resources=",
    ]
    with pytest.raises(TypeError, match="deps must be a callable"):
        agent_step("summary", agent=support, prompt="{rows}", deps="customers")  # type: ignore[arg-type]


def test_a_resource_parameter_named_like_a_key_is_warned_about() -> None:
    """A parameter annotated as a resource receives the resource even when a context key has its name: the step
    does not read that key, and validation says so (a warning: the code may mean it)."""

    @step(name="tally")
    def count(rows: list[str], day: Warehouse) -> str:
        return str(len(rows))

    report = validate(Pipeline("orders", context=Orders, steps=[rows, count]))
    assert [str(f) for f in report.findings if f.code == "V-INJ"] == [
        "[V-INJ] warning at orders > step:tally: parameter 'day' receives a resource or the execution context, but "
        "it is also a context key's name: the step does not read that key. Hint: rename the parameter (with "
        "resources={'<new name>': '<resource key>'} for a resource), or the context field"
    ]
    assert resolve_keys(count, Pipeline("orders", context=Orders, steps=[rows, count]).fields).reads == ("rows",)
