"""Map: one op with the items awaited together (the default), or expanded with `inline=False` into a fan-out
with one `DynamicOutput` per element, the body's ops mapped over them, and a collect op (input order).

Both forms must end with the same final context; the expanded one shows each element's steps in the UI
(`each__double[i0]`, ...), and re-execution from failure re-runs only the element that failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    GraphDefinition,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition
from pydantic import BaseModel, Field

from flujo_dagster import FlujoDagsterTranslator, Pipeline, load_final_context, run_pipeline, step, validate
from flujo_dagster.adapter.compile.compiler import compile_pipeline
from flujo_dagster.dsl import Branch, Loop, Map
from flujo_dagster.dsl.steps import FunctionStep
from flujo_dagster.validation.scale import expanded_ops
from tests.map_defs import Flagged, flagged, map_job


class Nums(BaseModel):
    xs: list[int]
    x: int = 0
    doubled: int = 0
    label: str = ""
    labels: list[str] = Field(default_factory=list)
    offset: int = 100
    rounds: int = 0


@step(name="double", output_keys=["doubled"])
def double(x: int, offset: int) -> int:
    return 2 * x + offset


@step(name="name_it", output_keys=["label"])
def name_it(doubled: int, x: int) -> str:
    return f"{x}->{doubled}"


def pipeline(*, inline: bool = False, body: list[FunctionStep | Loop | Branch] | None = None) -> Pipeline:
    each = Map(
        "each",
        over="xs",
        item="x",
        body=body if body is not None else [double, name_it],
        result="label",
        into="labels",
        inline=inline,
    )
    return Pipeline("nums_inline" if inline else "nums_expanded", context=Nums, steps=[each], assets=["labels"])


def graph_of(p: Pipeline) -> GraphDefinition:
    assert not validate(p).findings, validate(p).findings
    return compile_pipeline(p, translator=FlujoDagsterTranslator()).graph


def step_keys(instance: DagsterInstance, run_id: str, kind: DagsterEventType) -> list[str]:
    """The run's step keys with events of `kind`, without the `<pipeline>_graph.` prefix of pipelines with assets."""
    return [e.step_key.split(".", 1)[-1] for e in instance.all_logs(run_id, of_type=kind) if e.step_key]


def test_map_not_inline_expands_to_a_fanout_mapped_body_ops_and_a_collect() -> None:
    graph = graph_of(pipeline())
    nodes = {n.name: n for n in graph.nodes}
    assert set(nodes) == {
        "flujo_inputs",
        "each",
        "each__double",
        "each__name_it",
        "each__flujo_collect",
        "flujo_context",
        "flujo_context_check",  # the final context is not an asset: its check op
    }
    assert nodes["each"].definition.tags["flujo/kind"] == "map"
    assert [o.is_dynamic for o in nodes["each"].definition.output_defs] == [True]
    deps = graph.dependencies
    collect = {i: d for inv, i_d in deps.items() if inv.alias == "each__flujo_collect" for i, d in i_d.items()}
    # the result comes from the op that writes it in the body, collected per element
    assert isinstance(collect["results"], DynamicCollectDependencyDefinition)
    assert (collect["results"].node_name, collect["results"].output_name) == ("each__name_it", "label")
    assert expanded_ops(pipeline().steps) == 4
    assert expanded_ops(pipeline(inline=True).steps) == 1


@pytest.mark.parametrize("inline", [False, True], ids=["expanded", "inline"])
def test_both_forms_collect_results_in_input_order(inline: bool, instance: DagsterInstance) -> None:
    xs = [5, 3, 9, 1, 7, 2, 8, 4, 6, 0, 11, 10]  # 12 elements: i10 and i11 sort before i2 as text
    result = run_pipeline(pipeline(inline=inline), {"xs": xs}, instance=instance, log_level="ERROR")
    assert result.success, result.error
    assert result.context == Nums(xs=xs, labels=[f"{x}->{2 * x + 100}" for x in xs])
    assert load_final_context(pipeline(inline=inline), result.run_id, instance=instance) == result.context
    started = step_keys(instance, result.run_id, DagsterEventType.STEP_START)
    if not inline:
        assert {f"each__double[i{i}]" for i in range(12)} <= set(started)
        assert {f"each__name_it[i{i}]" for i in range(12)} <= set(started)
    else:
        assert "each" in started and not any("[" in k for k in started)


def test_an_empty_list_collects_an_empty_list(instance: DagsterInstance) -> None:
    result = run_pipeline(pipeline(), {"xs": []}, instance=instance, log_level="ERROR")
    assert result.success, result.error
    assert result.context is not None and result.context.labels == []
    assert "each__flujo_collect" in step_keys(instance, result.run_id, DagsterEventType.STEP_START)


def test_control_flow_inside_an_expanded_body_runs_inline_per_element(instance: DagsterInstance) -> None:
    @step(name="tick", output_keys=["rounds"])
    def tick(rounds: int) -> int:
        return rounds + 1

    @step(name="small", output_keys=["label"])
    def small(x: int, rounds: int) -> str:
        return f"small:{x}:{rounds}"

    @step(name="big", output_keys=["label"])
    def big(x: int, rounds: int) -> str:
        return f"big:{x}:{rounds}"

    grow = Loop("grow", body=[tick], until=lambda rounds, x: rounds >= x, max_iterations=5)
    size = Branch("size", on=lambda x: x > 2, cases={True: [big], False: [small]})
    p = pipeline(body=[grow, size])
    graph = graph_of(p)
    kinds = {n.name: n.definition.tags["flujo/kind"] for n in graph.nodes}
    assert kinds["each__grow"] == "inline_loop" and kinds["each__size"] == "inline_branch"
    result = run_pipeline(p, {"xs": [1, 3, 4]}, instance=instance, log_level="ERROR")
    assert result.success, result.error
    assert result.context is not None and result.context.labels == ["small:1:1", "big:3:3", "big:4:4"]
    inline = run_pipeline(pipeline(inline=True, body=[grow, size]), {"xs": [1, 3, 4]}, instance=instance)
    assert inline.context is not None and inline.context.labels == result.context.labels


def test_expanded_map_in_an_untaken_branch_arm_is_skipped(instance: DagsterInstance) -> None:
    each = pipeline().steps[0]
    fallback = step(name="fallback", output_keys=["labels"])(lambda xs: ["none"])
    p = Pipeline(
        "nums_arm",
        context=Nums,
        steps=[Branch("when", on=lambda xs: len(xs) > 1, cases={True: [each], False: [fallback]})],
    )
    assert not validate(p).findings
    taken = run_pipeline(p, {"xs": [1, 2]}, instance=instance, log_level="ERROR")
    assert taken.success and taken.context is not None and taken.context.labels == ["1->102", "2->104"]
    untaken = run_pipeline(p, {"xs": [1]}, instance=instance, log_level="ERROR")
    assert untaken.success and untaken.context is not None and untaken.context.labels == ["none"]
    skipped = step_keys(instance, untaken.run_id, DagsterEventType.STEP_SKIPPED)
    assert {"when__each", "when__each__flujo_collect"} <= set(skipped)


def test_expanded_map_needs_the_result_written_on_every_path() -> None:
    maybe = Branch("maybe", on=lambda x: x > 1, cases={True: [name_it]}, default=[])
    p = Pipeline(
        "nums_bad",
        context=Nums,
        steps=[Map("each", over="xs", item="x", body=[double, maybe], result="label", into="labels", inline=False)],
    )
    (finding,) = [f for f in validate(p).findings if f.code == "V-FLOW"]
    assert finding.severity == "error"
    assert finding.path == "nums_bad > map:each"
    assert finding.message == (
        "with inline=False each element's 'label' is collected from the op that writes it, but the body does not "
        "write it on every path."
    )
    assert finding.hint == "write 'label' on every path of the body, or use inline=True (the default)"


def test_reexecution_from_failure_reruns_only_the_failed_element(instance: DagsterInstance, tmp_path: Path) -> None:
    """Under the multiprocess executor: element 3 fails while a flag file is missing; re-executed from failure
    once it exists, only its step (and what comes after the Map) runs again."""
    flag = tmp_path / "ok"
    inputs = {"ops": {"flujo_inputs": {"config": {"inputs": {"xs": [1, 2, 3, 4], "flag": str(flag)}}}}}
    job = reconstructable(map_job)
    with execute_job(job, instance=instance, run_config=inputs, raise_on_error=False) as first:
        assert not first.success
    assert step_keys(instance, first.run_id, DagsterEventType.STEP_FAILURE) == ["each__check[i2]"]
    flag.write_text("")
    options = ReexecutionOptions.from_failure(first.run_id, instance)
    with execute_job(job, instance=instance, reexecution_options=options) as second:
        assert second.success
    rerun = set(step_keys(instance, second.run_id, DagsterEventType.STEP_START))
    assert rerun == {"each__check[i2]", "each__flujo_collect", "flujo_context"}
    assert load_final_context(flagged, second.run_id, instance=instance) == Flagged(
        xs=[1, 2, 3, 4], flag=str(flag), ys=[2, 4, 6, 8]
    )
