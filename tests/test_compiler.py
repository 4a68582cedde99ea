"""Compiling pipelines: typed keys as ins and outs, inputs validated first, retries, timeouts, assets, naming."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
from datetime import timedelta
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal

import anyio
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, Definitions
from pydantic import Base64Bytes, BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel
from typing_extensions import TypedDict

from flujo_dagster import (
    Approval,
    Branch,
    FlujoDagsterTranslator,
    Loop,
    Map,
    Pipeline,
    Price,
    Retry,
    RunInputsError,
    agent_step,
    build_definitions,
    load_final_context,
    run_pipeline,
    step,
    validate,
)
from flujo_dagster.adapter.compile.compiler import compile_pipeline
from flujo_dagster.adapter.storage.types import KeyType
from flujo_dagster.names import STEP_PATH, OpKind, op_kind


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Point(TypedDict):
    x: float
    y: float


class Item(BaseModel):
    name: str
    price: Decimal
    when: dt.datetime


class Rich(BaseModel):
    seed: int
    label: str | int = 0
    mode: Literal["fast", "slow"] = "fast"
    positive: Annotated[int, Field(gt=0)] = 1
    point: Point | None = None
    items: dict[str, Item] = Field(default_factory=dict)
    colour: Colour = Colour.RED
    ratio: float = 0.0


class Parts(BaseModel):
    label: str | int
    mode: Literal["fast", "slow"]


@step
def point(seed: int) -> Point:
    return {"x": seed / 2, "y": float("inf")}


@step(output_keys=["label", "mode"])
def classify(seed: int, point: Point | None) -> Parts:
    return Parts(label=seed if seed % 2 else f"even-{seed}", mode="slow")


@step
async def items(label: str | int, mode: Literal["fast", "slow"]) -> dict[str, Item]:
    await anyio.sleep(0)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    return {str(label): {"name": mode, "price": "1.10", "when": when.isoformat()}}  # type: ignore[dict-item]


@step
def ratio(items: dict[str, Item]) -> float:
    return float("nan") if len(items) == 1 else 0.0


rich = Pipeline(
    "rich", context=Rich, steps=point >> classify >> items >> ratio, assets=["items", "ratio"], context_asset=True
)


def test_keys_of_every_pydantic_shape_flow_through_typed_ops(instance: DagsterInstance) -> None:
    result = run_pipeline(rich, {"seed": 4, "colour": "blue"}, instance=instance)
    assert result.success, result.error
    ctx = result.context
    assert isinstance(ctx, Rich)
    assert ctx.point == {"x": 2.0, "y": float("inf")}
    assert ctx.label == "even-4" and ctx.mode == "slow"
    assert ctx.colour is Colour.BLUE
    item = ctx.items["even-4"]
    assert isinstance(item, Item) and item.price == Decimal("1.10") and item.when.tzinfo is not None
    assert ctx.ratio != ctx.ratio  # NaN survived the JSON round trip


def test_ops_carry_key_types_built_from_the_context_annotations() -> None:
    compiled = compile_pipeline(rich, translator=FlujoDagsterTranslator())
    ops = {n.name: n.definition for n in compiled.graph.nodes}
    assert set(ops) == {"flujo_inputs", "point", "classify", "items", "ratio", "flujo_context"}
    out = ops["classify"].output_dict  # type: ignore[attr-defined]
    assert set(out) == {"label", "mode"}
    label_type = out["label"].dagster_type
    assert isinstance(label_type, KeyType) and label_type.annotation == (str | int)
    ins = ops["items"].input_dict  # type: ignore[attr-defined]
    assert ins["mode"].dagster_type.annotation == Literal["fast", "slow"]
    deps = compiled.graph.dependency_structure
    upstream = {h.node_name for h in deps.all_upstream_outputs_from_node("items")}
    assert upstream == {"classify"}


def test_bad_inputs_are_refused_before_any_run(instance: DagsterInstance) -> None:
    with pytest.raises(RunInputsError) as info:
        run_pipeline(rich, {"seed": "not a number", "mode": "medium", "nope": 1}, instance=instance)
    assert info.value.problems == (
        "seed: Input should be a valid integer, unable to parse string as an integer (int_parsing; got 'not a number')",
        "mode: Input should be 'fast' or 'slow' (literal_error; got 'medium')",
        "nope: not an input of this pipeline (got 1)",
    )
    assert str(info.value).startswith("invalid run inputs for pipeline 'rich' (3 problem(s), checked with Rich;")
    assert isinstance(info.value.__cause__, ValidationError)
    assert instance.get_runs() == []


def test_launchpad_inputs_are_validated_by_the_first_op_before_any_step(instance: DagsterInstance) -> None:
    defs = build_definitions(pipelines=[rich])
    job = defs.resolve_job_def("rich")
    config = {"ops": {"rich_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"seed": 1, "positive": -3}}}}}}}
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    started = [e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START]
    assert started == ["rich_graph.flujo_inputs"]
    (failure,) = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert failure.step_failure_data is not None and failure.step_failure_data.error is not None
    cause = failure.step_failure_data.error.cause  # under Dagster's DagsterExecutionStepExecutionError
    assert cause is not None and cause.cls_name == "RunInputsError"
    assert "  - positive: Input should be greater than 0 (greater_than; got -3)\n" in cause.message


class Counter(BaseModel):
    start: int
    value: int | None = None


_attempts = itertools.count()


@step(retry=Retry(max_retries=2, delay=timedelta(seconds=0.0), backoff="constant"))
def value(start: int) -> int:
    if next(_attempts) < 2:
        raise RuntimeError("flaky")
    return start + 1


def test_step_retries_run_in_the_op_and_are_logged(instance: DagsterInstance) -> None:
    """The leaf executor retries in the op's process (no Dagster RetryPolicy): one step start, no Dagster step
    retry, and a warning for each failed attempt."""
    compiled = compile_pipeline(
        Pipeline("retrying", context=Counter, steps=[value]), translator=FlujoDagsterTranslator()
    )
    assert compiled.graph.node_named("value").definition.retry_policy is None  # type: ignore[attr-defined]
    result = run_pipeline(Pipeline("retrying", context=Counter, steps=[value]), {"start": 1}, instance=instance)
    assert result.success, result.error
    assert isinstance(result.context, Counter) and result.context.value == 2
    assert next(_attempts) == 3  # two failed attempts, one success
    starts = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START)
    assert [e.step_key for e in starts].count("value") == 1
    assert instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY) == []
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if "trying again" in e.user_message]
    assert warnings == [
        f"retrying > step:value: attempt {n} of 3 failed with RuntimeError: flaky; trying again in 0 s" for n in (1, 2)
    ]


@step(name="value", timeout=timedelta(seconds=0.2))
async def slow_value(start: int) -> int:
    await anyio.sleep(5)
    return start


@step(name="value")
def wrong_value(start: int) -> Any:
    return "not an int"


def test_timeout_fails_the_step_with_its_path(instance: DagsterInstance) -> None:
    result = run_pipeline(Pipeline("slow", context=Counter, steps=[slow_value]), {"start": 1}, instance=instance)
    assert not result.success
    assert result.error is not None
    assert "StepTimeoutError: step slow > step:value did not finish within its timeout of 0.2 s" in result.error


def test_a_value_of_the_wrong_type_fails_naming_step_and_key(instance: DagsterInstance) -> None:
    result = run_pipeline(Pipeline("wrong", context=Counter, steps=[wrong_value]), {"start": 1}, instance=instance)
    assert not result.success and result.error is not None
    assert "StepOutputError: step wrong > step:value returned a value for key 'value' that is not a int | None" in (
        result.error
    )


class Renamed(FlujoDagsterTranslator):
    def get_asset_key(self, pipeline: Pipeline, key: str) -> AssetKey:
        return AssetKey(["llm", pipeline.name, key])

    def get_group_name(self, pipeline: Pipeline, key: str | None) -> str | None:
        return "llm_outputs"


def test_translator_names_assets_and_lineage_follows_key_flow() -> None:
    defs = build_definitions(pipelines=[rich], translator=Renamed())
    graph = defs.resolve_asset_graph()
    items_key, ratio_key = AssetKey(["llm", "rich", "items"]), AssetKey(["llm", "rich", "ratio"])
    assert {items_key, ratio_key} <= set(graph.get_all_asset_keys())
    assert graph.get(ratio_key).parent_keys == {items_key}
    assert graph.get(items_key).group_name == "llm_outputs"
    final = graph.get(AssetKey(["rich", "final_context"]))
    assert final.parent_keys == {items_key, ratio_key}
    Definitions.validate_loadable(defs)


def test_pipelines_compose_with_rshift() -> None:
    first = Pipeline("first", context=Rich, steps=[point])
    combined = first >> classify >> Pipeline("more", context=Rich, steps=items >> ratio, assets=["ratio"])
    assert [s.name for s in combined.steps] == ["point", "classify", "items", "ratio"]
    assert combined.name == "first" and combined.assets == ("ratio",)


class Blobs(BaseModel):
    raw: Base64Bytes
    size: Annotated[int, Field(gt=0)] | None = None


@step
def size(raw: bytes) -> int:
    return len(raw)


def test_field_metadata_is_part_of_the_key_type(instance: DagsterInstance) -> None:
    pipeline = Pipeline("blobs", context=Blobs, steps=[size])
    data = b"\xff\x00\xfe binary"
    result = run_pipeline(pipeline, {"raw": base64.b64encode(data).decode()}, instance=instance)
    assert result.success, result.error
    assert isinstance(result.context, Blobs) and result.context.raw == data and result.context.size == len(data)
    empty = run_pipeline(pipeline, {"raw": ""}, instance=instance)  # size 0 breaks the field's gt=0
    assert not empty.success and empty.error is not None
    assert "StepOutputError: step blobs > step:size returned a value for key 'size'" in empty.error
    assert "Input should be greater than 0" in empty.error


class Constant(BaseModel):
    answer: int | None = None


@step
def answer() -> int:
    return 42


def test_a_pipeline_without_inputs_builds_and_runs_as_assets(instance: DagsterInstance) -> None:
    pipeline = Pipeline("constant", context=Constant, steps=[answer], assets=["answer"])
    defs = build_definitions(pipelines=[pipeline])
    Definitions.validate_loadable(defs)
    result = run_pipeline(pipeline, instance=instance)
    assert result.success, result.error
    assert result.context == Constant(answer=42)
    assert load_final_context(pipeline, result.run_id, instance=instance) == Constant(answer=42)


@step(name="value", timeout=timedelta(seconds=5))
def own_timeout(start: int) -> int:
    raise TimeoutError("the upstream API timed out")


class AsyncCallable:
    async def __call__(self, start: int) -> int:
        await anyio.sleep(0)
        return start * 10


def test_a_steps_own_timeout_error_is_not_reported_as_a_step_timeout(instance: DagsterInstance) -> None:
    result = run_pipeline(Pipeline("own", context=Counter, steps=[own_timeout]), {"start": 1}, instance=instance)
    assert not result.success and result.error is not None
    assert result.error == "step value: TimeoutError: the upstream API timed out"


def test_an_async_callable_object_with_a_timeout_is_awaited(instance: DagsterInstance) -> None:
    callable_step = step(name="value", input_keys=["start"], output_keys=["value"], timeout=timedelta(seconds=5))(
        AsyncCallable()
    )
    result = run_pipeline(Pipeline("acall", context=Counter, steps=[callable_step]), {"start": 2}, instance=instance)
    assert result.success, result.error
    assert result.context == Counter(start=2, value=20)


class Guarded(BaseModel):
    topic: str
    verdict: str | None = None

    @field_validator("topic")
    @classmethod
    def not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("topic must not be blank")
        return value

    @model_validator(mode="after")
    def verdict_is_known(self) -> Guarded:
        if self.verdict not in (None, "publish", "revise"):
            raise ValueError(f"unknown verdict {self.verdict!r}")
        return self


@step
def verdict(topic: str) -> str:
    return "publish" if topic == "good" else "maybe"


def test_field_validators_check_inputs_and_model_validators_check_the_final_context(
    instance: DagsterInstance,
) -> None:
    pipeline = Pipeline("guarded", context=Guarded, steps=[verdict])
    with pytest.raises(RunInputsError) as info:
        run_pipeline(pipeline, {"topic": "  "}, instance=instance)
    assert info.value.problems == ("topic: Value error, topic must not be blank (value_error; got '  ')",)
    assert run_pipeline(pipeline, {"topic": "good"}, instance=instance).context == Guarded(
        topic="good", verdict="publish"
    )
    bad = run_pipeline(pipeline, {"topic": "other"}, instance=instance)
    assert not bad.success and bad.error is not None
    assert "does not validate as Guarded" in bad.error and "unknown verdict 'maybe'" in bad.error


class Kinds(BaseModel):
    topic: str
    draft: str = ""
    answer: str = ""
    n: int = 0
    m: int = 0
    note: str = ""
    xs: list[int] = Field(default_factory=list)
    x: int = 0
    y: int = 0
    ys: list[int] = Field(default_factory=list)
    z: int = 0
    zs: list[int] = Field(default_factory=list)


@step(output_keys=["draft"])
def write(topic: str) -> str:
    return topic


@step(output_keys=["n"])
def bump(n: int) -> int:
    return n + 1


@step(output_keys=["m"])
def spin(m: int) -> int:
    return m + 1


@step(output_keys=["note"])
def high(n: int) -> str:
    return "high"


@step(output_keys=["note"])
def low(n: int) -> str:
    return "low"


@step(output_keys=["y"])
def triple(x: int) -> int:
    return 3 * x


@step(output_keys=["z"])
def square(x: int) -> int:
    return x * x


def test_every_op_carries_its_kind_as_a_plain_string_tag() -> None:
    pipeline = Pipeline(
        "kinds",
        context=Kinds,
        steps=[
            write,
            agent_step("answer", agent=Agent(TestModel()), prompt="{topic}"),
            Approval("review", show=["draft"]),
            Loop("grow", body=[bump], until=lambda n: n >= 2, max_iterations=2),
            Branch("route", on=lambda n: n > 1, cases={True: [high], False: [low]}),
            Map("each", over="xs", item="x", body=[triple], result="y", into="ys", inline=False),
            Map("each_inline", over="xs", item="x", body=[square], result="z", into="zs"),
            Loop("spinning", body=[spin], until=lambda m: m >= 2, max_iterations=2, inline=True),
        ],
    )
    free = Price(input_per_mtok=0, output_per_mtok=0)  # TestModel has no price of its own
    assert not validate(pipeline, prices={"test:test": free}).errors
    graph = compile_pipeline(pipeline, translator=FlujoDagsterTranslator()).graph
    kinds = {node.name: op_kind(node.definition.tags) for node in graph.nodes}
    assert None not in kinds.values(), kinds
    assert set(kinds.values()) == {
        OpKind.INPUTS,
        OpKind.CONTEXT,
        OpKind.FUNCTION,
        OpKind.AGENT,
        OpKind.APPROVAL,
        OpKind.LOOP_GATE,
        OpKind.JOIN,
        OpKind.ROUTER,
        OpKind.FAN_OUT,
        OpKind.COLLECT,
        OpKind.INLINE_MAP,
        OpKind.INLINE_LOOP,
    }
    assert kinds["route"] is OpKind.ROUTER and kinds["grow__i1__flujo_until"] is OpKind.LOOP_GATE
    for node in graph.nodes:  # on the wire: the plain strings Dagster serializes
        assert all(type(value) is str for value in node.definition.tags.values())
    tags = graph.node_named("grow__i2__bump").definition.tags
    assert tags["flujo/kind"] == "function" and tags[STEP_PATH] == "kinds > loop:grow > i2 > step:bump"
    assert graph.node_named("each_inline").definition.tags["flujo/kind"] == "inline_map"
