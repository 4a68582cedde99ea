"""Control flow (Loop, Branch, Parallel), expanded into ops and inline in one op: which ops exist and what
depends on what, and runs on a persistent instance checking the final typed context.

Expanded and inline forms of one pipeline must end with the same final context. Step names are unique per
pipeline (V-NAME), so steps that appear in several places are made by small factories.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    GraphDefinition,
    execute_job,
    instance_for_test,
    reconstructable,
)
from pydantic import BaseModel, Field

from flujo_dagster import (
    FlujoDagsterTranslator,
    Pipeline,
    PipelineRun,
    load_final_context,
    run_pipeline,
    step,
    validate,
)
from flujo_dagster.adapter.compile.compiler import compile_pipeline
from flujo_dagster.adapter.compile.definitions import default_resources
from flujo_dagster.dsl import Branch, FunctionStep, Group, Loop, Map, Parallel, Step
from tests.control_flow_defs import Review, review, review_multiprocess_job


class Doc(BaseModel):
    """`n` is the only input; every other key has a default."""

    n: int
    draft: str = ""
    score: int = 0
    count: int = 0
    a: int = 0
    b: int = 0
    c: int = 0
    kind: str = ""
    verdict: str = "none"
    trail: list[str] = Field(default_factory=list)


Mode = Literal["expanded", "inline", "inner"]
"""expanded: every construct becomes ops (parallels with inline=False); inline: the outermost node has
inline=True (one op); inner: the innermost construct is inline, the rest expanded."""
MODES: tuple[Mode, ...] = ("expanded", "inline", "inner")
SIDE_EFFECTS: list[str] = []


# --- steps -----------------------------------------------------------------------------------------------------


@step
def draft(draft: str) -> str:
    return draft + "x"


@step
def score(draft: str) -> int:
    return len(draft)


@step
def kind(n: int) -> str:
    return {1: "short", 2: "long"}.get(n, "other")


@step(name="publish", output_keys=["verdict"])
def publish(draft: str, score: int) -> str:
    return f"{draft}:{score}"


@step(name="seal", output_keys=["trail"])
def seal(trail: list[str], verdict: str, draft: str) -> list[str]:
    return [*trail, f"{verdict}/{draft}"]


def bump(name: str, key: str, by: int = 1) -> FunctionStep:
    """A step `name` that adds `by` to the int key `key`."""

    def add(**values: int) -> int:
        return values[key] + by

    return step(name=name, input_keys=[key], output_keys=[key])(add)


def note(name: str) -> FunctionStep:
    """A step `name` that appends its name to `trail`: the trail shows which steps ran, in order."""

    def append(trail: list[str]) -> list[str]:
        return [*trail, name]

    return step(name=name, output_keys=["trail"])(append)


def verdict_step(name: str) -> FunctionStep:
    """A step `name` writing `verdict` = `<name>:<n>`."""

    def decide(n: int) -> str:
        return f"{name}:{n}"

    return step(name=name, output_keys=["verdict"])(decide)


def sleepy(name: str, key: str, seconds: float) -> FunctionStep:
    """An async step `name` that waits `seconds` (a model call's latency) and writes `n + 1` to `key`."""

    async def wait(n: int) -> int:
        await asyncio.sleep(seconds)
        return n + 1

    return step(name=name, output_keys=[key])(wait)


def slow_good(name: str = "good") -> FunctionStep:
    """Writes `a` after 0.3 s and records a side effect: proves the step finished despite a sibling failing."""

    async def work(n: int) -> int:
        await asyncio.sleep(0.3)
        SIDE_EFFECTS.append(name)
        return n + 1

    return step(name=name, output_keys=["a"])(work)


@step(name="explode", output_keys=["b"])
def explode(n: int) -> int:
    raise ValueError(f"boom at {n}")


# --- helpers ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterInstance]:
    """One persistent SQLite instance in a temporary DAGSTER_HOME for the whole module (conftest's fixture,
    created once: each creation costs ~0.7 s). Runs are told apart by their ids."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def checked(pipeline: Pipeline) -> Pipeline:
    """The pipeline, after asserting it validates without any finding."""
    assert [f.render() for f in validate(pipeline).findings] == []
    return pipeline


def graph_of(pipeline: Pipeline) -> GraphDefinition:
    return compile_pipeline(checked(pipeline), translator=FlujoDagsterTranslator()).graph


def wiring(graph: GraphDefinition) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """node -> input -> the (node, output) pairs feeding it (sorted; a fan-in input lists several)."""
    structure = graph.dependency_structure
    return {
        node.name: {
            node_input.input_name: sorted((o.node_name, o.output_name) for o in outputs)
            for node_input, outputs in structure.input_to_upstream_outputs_for_node(node.name).items()
        }
        for node in graph.nodes
    }


def outputs_of(graph: GraphDefinition, node: str) -> set[str]:
    return {o.name for o in graph.node_named(node).definition.output_defs}


def kind_of(graph: GraphDefinition, node: str) -> str:
    return graph.node_named(node).definition.tags["flujo/kind"]


def run(pipeline: Pipeline, instance: DagsterInstance, **inputs: object) -> PipelineRun:
    return run_pipeline(checked(pipeline), inputs, instance=instance, log_level="ERROR")


def ok(pipeline: Pipeline, instance: DagsterInstance, **inputs: object) -> tuple[Doc, PipelineRun]:
    """Run, assert success, and return the typed final context (also as the persistent instance stores it)."""
    result = run(pipeline, instance, **inputs)
    assert result.success, result.error
    assert isinstance(result.context, Doc)
    assert load_final_context(pipeline, result.run_id, instance=instance) == result.context
    return result.context, result


def step_keys(instance: DagsterInstance, run_id: str, event: DagsterEventType) -> set[str]:
    return {e.step_key for e in instance.all_logs(run_id, of_type=event) if e.step_key is not None}


def event_time(instance: DagsterInstance, run_id: str, event: DagsterEventType, step_key: str) -> float:
    (entry,) = [e for e in instance.all_logs(run_id, of_type=event) if e.step_key == step_key]
    return entry.timestamp


def started(instance: DagsterInstance, result: PipelineRun) -> set[str]:
    return step_keys(instance, result.run_id, DagsterEventType.STEP_START)


def skipped(instance: DagsterInstance, result: PipelineRun) -> set[str]:
    return step_keys(instance, result.run_id, DagsterEventType.STEP_SKIPPED)


def output_metadata(instance: DagsterInstance, result: PipelineRun, node: str) -> dict[str, Any]:
    """The metadata of the first output `node` yielded in the run (inline ops put their table there)."""
    for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_OUTPUT):
        data = e.dagster_event.step_output_data if e.dagster_event else None
        if e.dagster_event and e.dagster_event.step_key == node and data is not None and data.metadata:
            return {k: v.value for k, v in data.metadata.items()}
    raise AssertionError(f"no output metadata from {node}")


def inner_paths(instance: DagsterInstance, result: PipelineRun, node: str) -> list[str]:
    """The inner steps an inline op ran, in order, from its `flujo/steps_json` metadata."""
    return [r["path"] for r in output_metadata(instance, result, node)["flujo/steps_json"]]


def iteration_ops(loop: str, iterations: range, *steps: str) -> set[str]:
    return {f"{loop}__i{i}__{s}" for i in iterations for s in (*steps, "flujo_until")}


# --- Loop ------------------------------------------------------------------------------------------------------


def refine_pipeline(
    inline: bool, max_iterations: int = 4, on_exhausted: Literal["fail", "continue"] = "fail"
) -> Pipeline:
    """A loop growing `draft` until `score` (its length) reaches `n`, then a step reading both."""
    loop = Loop(
        "refine",
        body=[draft, score],
        until=lambda score, n: score >= n,
        max_iterations=max_iterations,
        on_exhausted=on_exhausted,
        inline=inline,
    )
    return Pipeline("refining", context=Doc, steps=[loop, publish])


def test_loop_expanded_unrolls_iterations_with_gates_and_a_join() -> None:
    graph = graph_of(refine_pipeline(inline=False, max_iterations=3))
    deps = wiring(graph)
    assert set(deps) == {
        "flujo_inputs",
        *iteration_ops("refine", range(1, 4), "draft", "score"),
        "refine__flujo_join",
        "publish",
        "flujo_context",
    }
    # iteration 1 reads the keys from before the loop; it is not gated
    assert deps["refine__i1__draft"] == {"draft": [("flujo_inputs", "draft")]}
    assert deps["refine__i1__score"] == {"draft": [("refine__i1__draft", "draft")]}
    # a gate that lets the next iteration go on waits for what that iteration reads (iteration k's draft), so
    # that a failure before it abandons the gate and everything it gates (see adapter/compile/graph/gates.py)
    assert deps["refine__i1__flujo_until"] == {
        "n": [("flujo_inputs", "n")],
        "score": [("refine__i1__score", "score")],
        "after": [("refine__i1__draft", "draft")],
    }
    # iteration k + 1 reads iteration k's keys and runs only when iteration k's gate says `next`
    for i in (2, 3):
        gate = [(f"refine__i{i - 1}__flujo_until", "next")]
        assert deps[f"refine__i{i}__draft"] == {"draft": [(f"refine__i{i - 1}__draft", "draft")], "flujo_gate": gate}
        assert deps[f"refine__i{i}__score"] == {"draft": [(f"refine__i{i}__draft", "draft")], "flujo_gate": gate}
        assert deps[f"refine__i{i}__flujo_until"] == {
            "n": [("flujo_inputs", "n")],
            "score": [(f"refine__i{i}__score", "score")],
            "flujo_gate": gate,
            **({"after": [(f"refine__i{i}__draft", "draft")]} if i < 3 else {}),  # the last gate gates nothing
        }
    assert (
        outputs_of(graph, "refine__i1__flujo_until")
        == outputs_of(graph, "refine__i2__flujo_until")
        == {
            "exit",
            "next",
        }
    )
    assert outputs_of(graph, "refine__i3__flujo_until") == {"exit"}  # the last gate cannot go on
    # the join waits on every gate's exit and on each iteration's last producer (its `draft` comes before its
    # `score`, which reads it); it forwards the exiting iteration's keys
    assert deps["refine__flujo_join"] == {
        "after": sorted(
            [(f"refine__i{i}__flujo_until", "exit") for i in range(1, 4)]
            + [(f"refine__i{i}__score", "score") for i in range(1, 4)]
        )
    }
    assert outputs_of(graph, "refine__flujo_join") == {"draft", "score"}
    assert deps["publish"] == {"draft": [("refine__flujo_join", "draft")], "score": [("refine__flujo_join", "score")]}
    assert kind_of(graph, "refine__i1__flujo_until") == "loop_gate"
    assert kind_of(graph, "refine__flujo_join") == "join"


def test_loop_inline_is_one_op() -> None:
    graph = graph_of(refine_pipeline(inline=True))
    deps = wiring(graph)
    assert set(deps) == {"flujo_inputs", "refine", "publish", "flujo_context"}
    assert deps["refine"] == {"draft": [("flujo_inputs", "draft")], "n": [("flujo_inputs", "n")]}
    assert outputs_of(graph, "refine") == {"flujo_keys"}  # fused: the keys travel as one bundle output
    assert deps["publish"] == {"draft": [("refine", "flujo_keys")], "score": [("refine", "flujo_keys")]}
    assert kind_of(graph, "refine") == "inline_loop"


def test_loop_exits_at_the_first_iteration_meeting_until(instance: DagsterInstance) -> None:
    expanded, run_e = ok(refine_pipeline(inline=False), instance, n=2)
    inline, run_i = ok(refine_pipeline(inline=True), instance, n=2)
    assert expanded == inline == Doc(n=2, draft="xx", score=2, verdict="xx:2")
    # iterations 1 and 2 ran; 3 and 4 were skipped, not run
    assert started(instance, run_e) == {
        "flujo_inputs",
        *iteration_ops("refine", range(1, 3), "draft", "score"),
        "refine__flujo_join",
        "publish",
        "flujo_context",
    }
    assert skipped(instance, run_e) == iteration_ops("refine", range(3, 5), "draft", "score")
    assert started(instance, run_i) == {"flujo_inputs", "refine", "publish", "flujo_context"}
    assert inner_paths(instance, run_i, "refine") == [
        f"refining > loop:refine > i{i} > step:{s}" for i in (1, 2) for s in ("draft", "score")
    ]
    # the same, as the markdown table the UI shows: a header, a rule, one row per inner step
    table = output_metadata(instance, run_i, "refine")["flujo/steps"].splitlines()
    assert table[0].startswith("| step | status |") and len(table) == 2 + 4
    assert table[2].startswith("| refining > loop:refine > i1 > step:draft | ok |")


EXHAUSTED = (
    "loop refining > loop:refine did not meet its `until` condition within max_iterations=2. Raise "
    "max_iterations, or pass on_exhausted='continue' to go on with the last iteration's keys."
)


@pytest.mark.parametrize(
    ("inline", "failed_step", "at"),
    [
        (False, "refine__i2__flujo_until", "refining > loop:refine > i2"),
        (True, "refine", "refining > loop:refine"),
    ],
    ids=["expanded", "inline"],
)
def test_loop_exhausted_fails_naming_the_loop_and_max_iterations(
    instance: DagsterInstance, inline: bool, failed_step: str, at: str
) -> None:
    result = run(refine_pipeline(inline=inline, max_iterations=2), instance, n=5)
    assert not result.success
    assert result.error is not None
    assert result.error.startswith(f"step {failed_step}: ")
    assert result.error == f"step {failed_step}: flujo_dagster.errors.ControlFlowError: {EXHAUSTED}"
    assert "publish" not in started(instance, result)


def test_loop_exhausted_continue_goes_on_with_the_last_iterations_keys(instance: DagsterInstance) -> None:
    expanded, run_e = ok(refine_pipeline(inline=False, max_iterations=2, on_exhausted="continue"), instance, n=5)
    inline, _ = ok(refine_pipeline(inline=True, max_iterations=2, on_exhausted="continue"), instance, n=5)
    assert expanded == inline == Doc(n=5, draft="xx", score=2, verdict="xx:2")
    assert "publish" in started(instance, run_e)


# --- Branch ----------------------------------------------------------------------------------------------------


def route_pipeline(inline: bool, *, default: bool = True) -> Pipeline:
    """`draft` is written before the branch; the "long" arm overwrites it (without reading it), the others
    leave it alone."""
    route = Branch(
        "route",
        on="kind",
        cases={
            "short": [verdict_step("short_verdict")],
            "long": [step(name="long_draft", output_keys=["draft"])(lambda n: "y" * n), verdict_step("long_v")],
        },
        default=[verdict_step("other_verdict")] if default else None,
        inline=inline,
    )
    return Pipeline("routing", context=Doc, steps=[draft, kind, route, seal])


def test_branch_expanded_has_a_router_one_gated_arm_per_case_and_a_join() -> None:
    graph = graph_of(route_pipeline(inline=False))
    deps = wiring(graph)
    assert set(deps) == {
        "flujo_inputs",
        "draft",
        "kind",
        "route",
        "route__short_verdict",
        "route__long_draft",
        "route__long_v",
        "route__other_verdict",
        "route__flujo_join",
        "seal",
        "flujo_context",
    }
    # the router waits for what its arms read (`n`)
    assert deps["route"] == {"kind": [("kind", "kind")], "after": [("flujo_inputs", "n")]}
    assert outputs_of(graph, "route") == {"decision", "arm_0", "arm_1", "arm_2"}
    assert kind_of(graph, "route") == "branch"
    assert deps["route__short_verdict"] == {"n": [("flujo_inputs", "n")], "flujo_gate": [("route", "arm_0")]}
    assert deps["route__long_draft"] == {"n": [("flujo_inputs", "n")], "flujo_gate": [("route", "arm_1")]}
    assert deps["route__long_v"] == {"n": [("flujo_inputs", "n")], "flujo_gate": [("route", "arm_1")]}
    assert deps["route__other_verdict"] == {"n": [("flujo_inputs", "n")], "flujo_gate": [("route", "arm_2")]}
    # the join reads the decision and waits on every arm's producers (an arm that does not write `draft`
    # forwards the value from before the branch)
    assert deps["route__flujo_join"] == {
        "decision": [("route", "decision")],
        "after": sorted(
            [
                ("route", "decision"),
                ("draft", "draft"),
                ("route__short_verdict", "verdict"),
                ("route__long_draft", "draft"),
                ("route__long_v", "verdict"),
                ("route__other_verdict", "verdict"),
            ]
        ),
    }
    assert outputs_of(graph, "route__flujo_join") == {"draft", "verdict"}
    assert deps["seal"] == {
        "trail": [("flujo_inputs", "trail")],
        "verdict": [("route__flujo_join", "verdict")],
        "draft": [("route__flujo_join", "draft")],
    }


def test_branch_inline_is_one_op_that_also_reads_the_keys_it_may_leave_alone() -> None:
    graph = graph_of(route_pipeline(inline=True))
    deps = wiring(graph)
    assert set(deps) == {"flujo_inputs", "draft", "kind", "route", "seal", "flujo_context"}
    # `draft` is rewritten on one arm only: the op reads it to pass it on when another arm is taken
    assert deps["route"] == {
        "kind": [("kind", "kind")],
        "n": [("flujo_inputs", "n")],
        "draft": [("draft", "draft")],
    }
    assert outputs_of(graph, "route") == {"flujo_keys"}
    assert kind_of(graph, "route") == "inline_branch"


ARMS = {
    # n -> (arm ops that run, final context)
    1: (
        {"route__short_verdict"},
        Doc(n=1, draft="x", kind="short", verdict="short_verdict:1", trail=["short_verdict:1/x"]),
    ),
    2: (
        {"route__long_draft", "route__long_v"},
        Doc(n=2, draft="yy", kind="long", verdict="long_v:2", trail=["long_v:2/yy"]),
    ),
    3: (
        {"route__other_verdict"},
        Doc(n=3, draft="x", kind="other", verdict="other_verdict:3", trail=["other_verdict:3/x"]),
    ),
}


@pytest.mark.parametrize("n", sorted(ARMS), ids=["case_short", "case_long", "default"])
def test_branch_takes_the_matching_case_or_the_default(instance: DagsterInstance, n: int) -> None:
    arm_ops, expected = ARMS[n]
    expanded, run_e = ok(route_pipeline(inline=False), instance, n=n)
    inline, _ = ok(route_pipeline(inline=True), instance, n=n)
    assert expanded == inline == expected
    every_arm = set().union(*(ops for ops, _ in ARMS.values()))
    assert started(instance, run_e) >= {"route", *arm_ops, "route__flujo_join", "seal", "flujo_context"}
    assert started(instance, run_e) & every_arm == arm_ops
    assert skipped(instance, run_e) == every_arm - arm_ops  # untaken cases show as skipped


def test_branch_without_a_match_or_default_fails_naming_the_value_and_the_cases(instance: DagsterInstance) -> None:
    message = (
        "flujo_dagster.errors.ControlFlowError: branch routing > branch:route: no case matches value 'other' "
        "and there is no default; known cases: 'short', 'long'. Add a case or a default."
    )
    for inline in (False, True):
        result = run(route_pipeline(inline=inline, default=False), instance, n=3)
        assert not result.success
        assert result.error is not None
        assert result.error.startswith("step route: ")
        assert result.error.endswith(message)
        assert "seal" not in started(instance, result)


# --- Parallel --------------------------------------------------------------------------------------------------


def fan_pipeline(*, inline: bool) -> Pipeline:
    fan = Parallel(
        "fan",
        branches={
            "l": [bump("left", "a", 1)],
            "r": [step(name="right", output_keys=["b"])(lambda n: n * 10), bump("right_again", "b", 5)],
        },
        inline=inline,
    )
    total = step(name="total", output_keys=["count"])(lambda a, b: a + b)
    return Pipeline("fanning", context=Doc, steps=[fan, total])


def test_parallel_and_map_default_to_one_op_the_other_nodes_to_expanded() -> None:
    assert Parallel("p", branches={}).inline and Map("m", over="a", item="b", body=[], result="b", into="c").inline
    assert not any(
        node.inline
        for node in (
            Loop("l", body=[], until=lambda a: True, max_iterations=1),
            Branch("b", on="a", cases={}),
            Group("g", steps=[]),
        )
    )


def test_parallel_inline_is_one_op() -> None:
    graph = graph_of(fan_pipeline(inline=True))
    deps = wiring(graph)
    assert set(deps) == {"flujo_inputs", "fan", "total", "flujo_context"}
    assert deps["fan"] == {"a": [("flujo_inputs", "a")], "n": [("flujo_inputs", "n")]}
    assert outputs_of(graph, "fan") == {"flujo_keys"}
    assert deps["total"] == {"a": [("fan", "flujo_keys")], "b": [("fan", "flujo_keys")]}
    assert kind_of(graph, "fan") == "inline_parallel"


def test_parallel_not_inline_gives_each_branch_its_own_ops() -> None:
    deps = wiring(graph_of(fan_pipeline(inline=False)))
    assert set(deps) == {
        "flujo_inputs",
        "fan__l__left",
        "fan__r__right",
        "fan__r__right_again",
        "total",
        "flujo_context",
    }
    # each branch reads the keys from before the Parallel, and the branches do not depend on each other
    assert deps["fan__l__left"] == {"a": [("flujo_inputs", "a")]}
    assert deps["fan__r__right"] == {"n": [("flujo_inputs", "n")]}
    assert deps["fan__r__right_again"] == {"b": [("fan__r__right", "b")]}
    assert deps["total"] == {"a": [("fan__l__left", "a")], "b": [("fan__r__right_again", "b")]}


def test_parallel_in_one_op_and_expanded_give_the_same_context(instance: DagsterInstance) -> None:
    one_op, _ = ok(fan_pipeline(inline=True), instance, n=2)
    ops, run_ops = ok(fan_pipeline(inline=False), instance, n=2)
    assert one_op == ops == Doc(n=2, a=1, b=25, count=26)
    assert {"fan__l__left", "fan__r__right", "fan__r__right_again"} <= started(instance, run_ops)


def test_parallel_branches_run_concurrently_in_one_op(instance: DagsterInstance) -> None:
    fan = Parallel(
        "fan",
        branches={
            "x": [sleepy("wait_a", "a", 0.5)],
            "y": [sleepy("wait_b", "b", 0.5)],
            "z": [sleepy("wait_c", "c", 0.5)],
        },
    )
    context, result = ok(Pipeline("waiting", context=Doc, steps=[fan]), instance, n=1)
    assert context == Doc(n=1, a=2, b=2, c=2)
    duration_s = event_time(instance, result.run_id, DagsterEventType.STEP_SUCCESS, "fan") - event_time(
        instance, result.run_id, DagsterEventType.STEP_START, "fan"
    )
    # three 0.5 s waits one after the other would take 1.5 s; together they take 0.5 s plus the op's overhead
    assert 0.5 <= duration_s < 1.2, duration_s
    records = output_metadata(instance, result, "fan")["flujo/steps_json"]
    assert sorted(r["path"] for r in records) == [
        f"waiting > parallel:fan > {label} > step:wait_{s}" for label, s in (("x", "a"), ("y", "b"), ("z", "c"))
    ]
    assert all(r["status"] == "ok" and r["duration_s"] >= 0.5 for r in records)


def failing_fan(
    on_branch_failure: Literal["fail", "ignore"],
    bad: list[Step] | None = None,
    inline: bool = True,
) -> Pipeline:
    fan = Parallel(
        "fan",
        branches={"good": [slow_good()], "bad": bad if bad is not None else [explode]},
        on_branch_failure=on_branch_failure,
        inline=inline,
    )
    after = step(name="after", output_keys=["count"])(lambda a, b: a + b)
    return Pipeline("failing", context=Doc, steps=[fan, after])


def test_parallel_failing_branch_fails_the_step_after_the_others_finish(instance: DagsterInstance) -> None:
    SIDE_EFFECTS.clear()
    result = run(failing_fan("fail"), instance, n=1)
    assert not result.success
    assert result.error == (
        "step fan: flujo_dagster.errors.ParallelBranchError: parallel failing > parallel:fan: branch(es) failed: "
        "'bad': ValueError: boom at 1"
    )
    assert SIDE_EFFECTS == ["good"]  # the good branch was not cancelled: it finished first
    assert "after" not in started(instance, result)


def test_expanded_parallel_failing_branch_fails_the_run_after_the_other_branch_ran(
    instance: DagsterInstance,
) -> None:
    SIDE_EFFECTS.clear()
    result = run(failing_fan("fail", inline=False), instance, n=1)
    assert not result.success
    assert result.error is not None and result.error.startswith("step fan__bad__explode: ")
    assert result.error.endswith("ValueError: boom at 1")
    assert SIDE_EFFECTS == ["good"]
    assert "fan__good__good" in step_keys(instance, result.run_id, DagsterEventType.STEP_SUCCESS)
    assert "after" not in started(instance, result)


def test_parallel_ignore_keeps_going_and_leaves_the_failed_branchs_keys_at_their_defaults(
    instance: DagsterInstance,
) -> None:
    SIDE_EFFECTS.clear()
    context, result = ok(failing_fan("ignore"), instance, n=1)
    assert context == Doc(n=1, a=2, b=0, count=2)  # b keeps its default: the bad branch wrote nothing
    assert SIDE_EFFECTS == ["good"]
    warnings = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if not e.is_dagster_event and e.level == logging.WARNING
    ]
    assert warnings == ["failing > parallel:fan > bad failed and was ignored: ValueError: boom at 1"]
    records = output_metadata(instance, result, "fan")["flujo/steps_json"]
    assert [(r["path"], r["status"]) for r in records] == [
        ("failing > parallel:fan > bad > step:explode", "failed"),
        ("failing > parallel:fan > good > step:good", "ok"),
        ("failing > parallel:fan > bad", "ignored"),
    ]


def test_parallel_ignore_never_swallows_a_flujo_dagster_error(instance: DagsterInstance) -> None:
    SIDE_EFFECTS.clear()
    nested = Branch("pick", on="n", cases={99: [bump("never", "b")]})
    result = run(failing_fan("ignore", bad=[nested]), instance, n=1)
    assert not result.success
    assert result.error is not None and result.error.startswith("step fan: ")
    assert result.error == (
        "step fan: flujo_dagster.errors.ControlFlowError: branch failing > parallel:fan > bad > branch:pick: "
        "no case matches value 1 and there is no default; known cases: 99. Add a case or a default."
    )
    assert SIDE_EFFECTS == ["good"]  # raised once the other branch had finished
    assert "after" not in started(instance, result)


# --- nestings, two and three levels deep -----------------------------------------------------------------------


def branch_in_loop(mode: Mode) -> Pipeline:
    parity = Branch(
        "parity",
        on=lambda count: count % 2,
        cases={0: [note("even")], 1: [note("odd")]},
        inline=mode == "inner",
    )
    grow = Loop(
        "grow",
        body=[bump("tick", "count"), parity],
        until=lambda count, n: count >= n,
        max_iterations=4,
        inline=mode == "inline",
    )
    return Pipeline("branch_in_loop", context=Doc, steps=[grow])


def loop_in_branch(mode: Mode) -> Pipeline:
    refine = Loop(
        "refine",
        body=[draft, score],
        until=lambda score, n: score >= n,
        max_iterations=4,
        inline=mode == "inner",
    )
    size = Branch(
        "size",
        on=lambda n: n > 2,
        cases={True: [refine]},
        default=[note("small")],
        inline=mode == "inline",
    )
    return Pipeline("loop_in_branch", context=Doc, steps=[size, publish])


def parallel_in_loop(mode: Mode) -> Pipeline:
    fan = Parallel(
        "fan",
        branches={"l": [bump("inc_a", "a")], "r": [bump("inc_b", "b", 2)]},
        inline=mode != "expanded",
    )
    rounds = Loop(
        "rounds",
        body=[fan, bump("tally", "count", 10)],
        until=lambda a, n: a >= n,
        max_iterations=3,
        inline=mode == "inline",
    )
    return Pipeline("parallel_in_loop", context=Doc, steps=[rounds])


def loop_in_parallel(mode: Mode) -> Pipeline:
    spin = Loop(
        "spin",
        body=[bump("spin_a", "a")],
        until=lambda a, n: a >= n,
        max_iterations=4,
        inline=mode == "inner",
    )
    fan = Parallel(
        "fan",
        branches={"l": [spin], "r": [bump("inc_b", "b")]},
        inline=mode == "inline",
    )
    return Pipeline("loop_in_parallel", context=Doc, steps=[fan])


def loop_in_loop(mode: Mode) -> Pipeline:
    inner = Loop(
        "inner",
        body=[bump("step_a", "a")],
        until=lambda a: a % 2 == 0,
        max_iterations=2,
        inline=mode == "inner",
    )
    outer = Loop(
        "outer",
        body=[inner, bump("step_count", "count")],
        until=lambda count, n: count >= n,
        max_iterations=3,
        inline=mode == "inline",
    )
    return Pipeline("loop_in_loop", context=Doc, steps=[outer])


def branch_in_loop_in_branch(mode: Mode) -> Pipeline:
    half = Branch(
        "half",
        on=lambda count: count == 1,
        cases={True: [note("first")]},
        default=[note("later")],
        inline=mode == "inner",
    )
    cycle = Loop("cycle", body=[bump("tick", "count"), half], until=lambda count, n: count >= n, max_iterations=3)
    top = Branch(
        "top",
        on=lambda n: n > 0,
        cases={True: [cycle]},
        default=[note("idle")],
        inline=mode == "inline",
    )
    return Pipeline("branch_in_loop_in_branch", context=Doc, steps=[top])


def parallel_in_branch_in_loop(mode: Mode) -> Pipeline:
    pair = Parallel(
        "pair",
        branches={"x": [bump("px", "a")], "y": [bump("py", "b", 10)]},
        inline=mode != "expanded",
    )
    route = Branch("route", on=lambda count: count % 2 == 1, cases={True: [pair]}, default=[note("rest")])
    outer = Loop(
        "outer",
        body=[bump("turn", "count"), route],
        until=lambda count, n: count >= n,
        max_iterations=3,
        inline=mode == "inline",
    )
    return Pipeline("parallel_in_branch_in_loop", context=Doc, steps=[outer])


@dataclass(frozen=True)
class Nesting:
    build: Callable[[Mode], Pipeline]
    n: int
    expected: Doc
    modes: tuple[Mode, ...]
    ran: frozenset[str]
    """ops that must have run in the expanded form"""
    not_ran: frozenset[str]
    """ops that must have been skipped in the expanded form (later iterations, untaken arms)"""


def _nesting(
    build: Callable[[Mode], Pipeline], n: int, expected: Doc, modes: str, ran: set[str], not_ran: set[str]
) -> Nesting:
    chosen = tuple(m for m in MODES if m in modes.split())
    return Nesting(build, n, expected, chosen, frozenset(ran), frozenset(not_ran))


NESTINGS: dict[str, Nesting] = {
    "branch_in_loop": _nesting(
        branch_in_loop,
        3,
        Doc(n=3, count=3, trail=["odd", "even", "odd"]),
        "expanded inline",  # its mixed form's ops: test_mixed_nesting_an_inline_branch_inside_an_expanded_loop
        {"grow__i1__parity__odd", "grow__i2__parity__even", "grow__i3__parity__odd", "grow__flujo_join"},
        {"grow__i1__parity__even", "grow__i2__parity__odd", "grow__i3__parity__even", "grow__i4__tick"},
    ),
    "loop_in_branch": _nesting(
        loop_in_branch,
        3,
        Doc(n=3, draft="xxx", score=3, verdict="xxx:3"),
        "expanded inline",
        {"size__refine__i3__score", "size__refine__flujo_join", "size__flujo_join", "publish"},
        {"size__refine__i4__draft", "size__small"},
    ),
    "loop_in_branch_default": _nesting(
        loop_in_branch,
        1,
        Doc(n=1, trail=["small"], verdict=":0"),
        "expanded inline",
        {"size__small", "size__flujo_join", "publish"},
        # every op of the loop, its join included
        {*iteration_ops("size__refine", range(1, 5), "draft", "score"), "size__refine__flujo_join"},
    ),
    "parallel_in_loop": _nesting(
        parallel_in_loop,
        2,
        Doc(n=2, a=2, b=4, count=20),
        "expanded inline",  # its mixed form (the parallel in one op) runs in parallel_in_branch_in_loop
        {"rounds__i2__fan__l__inc_a", "rounds__i2__fan__r__inc_b", "rounds__i2__tally", "rounds__flujo_join"},
        {"rounds__i3__fan__l__inc_a", "rounds__i3__fan__r__inc_b", "rounds__i3__tally", "rounds__i3__flujo_until"},
    ),
    "loop_in_parallel": _nesting(
        loop_in_parallel,
        3,
        Doc(n=3, a=3, b=1),
        "expanded inline",
        {"fan__l__spin__i3__spin_a", "fan__l__spin__flujo_join", "fan__r__inc_b"},
        {"fan__l__spin__i4__spin_a"},
    ),
    # outer i1: inner a=1 (odd), a=2 exits; outer i2: a=3, a=4 exits
    "loop_in_loop": _nesting(
        loop_in_loop,
        2,
        Doc(n=2, a=4, count=2),
        "expanded inline",
        {"outer__i2__inner__i2__step_a", "outer__i2__inner__flujo_join", "outer__i2__step_count"},
        {"outer__i3__inner__i1__step_a", "outer__i3__inner__flujo_join", "outer__i3__step_count"},
    ),
    "branch_in_loop_in_branch": _nesting(
        branch_in_loop_in_branch,
        2,
        Doc(n=2, count=2, trail=["first", "later"]),
        "expanded inline inner",
        {"top__cycle__i1__half__first", "top__cycle__i2__half__later", "top__cycle__flujo_join", "top__flujo_join"},
        {"top__cycle__i1__half__later", "top__cycle__i2__half__first", "top__cycle__i3__tick", "top__idle"},
    ),
    "branch_in_loop_in_branch_default": _nesting(
        branch_in_loop_in_branch,
        0,
        Doc(n=0, trail=["idle"]),
        "expanded",
        {"top__idle", "top__flujo_join"},
        {"top__cycle__i1__tick", "top__cycle__i1__half", "top__cycle__flujo_join"},
    ),
    # iterations 1 and 3 take the parallel, iteration 2 the default
    "parallel_in_branch_in_loop": _nesting(
        parallel_in_branch_in_loop,
        3,
        Doc(n=3, count=3, a=2, b=20, trail=["rest"]),
        "expanded inline inner",
        {"outer__i1__route__pair__x__px", "outer__i2__route__rest", "outer__i3__route__pair__y__py"},
        {"outer__i1__route__rest", "outer__i2__route__pair__x__px", "outer__i3__route__rest"},
    ),
}


@pytest.mark.parametrize(
    ("name", "mode"), [(name, mode) for name, nesting in NESTINGS.items() for mode in nesting.modes]
)
def test_nesting_gives_the_same_final_context_expanded_inline_and_mixed(
    instance: DagsterInstance, name: str, mode: Mode
) -> None:
    nesting = NESTINGS[name]
    pipeline = nesting.build(mode)
    context, result = ok(pipeline, instance, n=nesting.n)
    assert context == nesting.expected
    if mode == "expanded":
        assert nesting.ran <= started(instance, result)
        assert nesting.not_ran <= skipped(instance, result)
    elif mode == "inline":  # the nested construct is one op: one op per top-level step, and the first and last
        assert started(instance, result) == {"flujo_inputs", *(s.name for s in pipeline.steps), "flujo_context"}


def test_branch_in_loop_expanded_structure() -> None:
    deps = wiring(graph_of(branch_in_loop("expanded")))
    per_iteration = ["tick", "parity", "parity__even", "parity__odd", "parity__flujo_join", "flujo_until"]
    assert set(deps) == {
        "flujo_inputs",
        *(f"grow__i{i}__{s}" for i in range(1, 5) for s in per_iteration),
        "grow__flujo_join",
        "flujo_context",
    }
    assert deps["grow__i2__parity"] == {
        "count": [("grow__i2__tick", "count")],
        "flujo_gate": [("grow__i1__flujo_until", "next")],
        "after": [("grow__i1__parity__flujo_join", "trail")],  # what its arms read from outside them
    }
    assert deps["grow__i2__parity__even"] == {
        "trail": [("grow__i1__parity__flujo_join", "trail")],
        "flujo_gate": [("grow__i2__parity", "arm_0")],
    }
    assert deps["grow__i2__parity__odd"]["flujo_gate"] == [("grow__i2__parity", "arm_1")]
    assert deps["grow__i2__flujo_until"] == {
        "count": [("grow__i2__tick", "count")],
        "n": [("flujo_inputs", "n")],
        "flujo_gate": [("grow__i1__flujo_until", "next")],
        "after": [("grow__i2__parity__flujo_join", "trail")],  # what iteration 3 reads from iteration 2
    }
    assert deps["grow__i2__parity__flujo_join"]["decision"] == [("grow__i2__parity", "decision")]


def test_mixed_nesting_an_inline_branch_inside_an_expanded_loop() -> None:
    graph = graph_of(branch_in_loop("inner"))
    deps = wiring(graph)
    assert set(deps) == {
        "flujo_inputs",
        *(f"grow__i{i}__{s}" for i in range(1, 5) for s in ("tick", "parity", "flujo_until")),
        "grow__flujo_join",
        "flujo_context",
    }
    assert kind_of(graph, "grow__i2__parity") == "inline_branch"
    assert deps["grow__i2__parity"] == {
        "count": [("grow__i2__tick", "count")],
        "trail": [("grow__i1__parity", "flujo_keys")],
        "flujo_gate": [("grow__i1__flujo_until", "next")],
    }


def test_loop_in_branch_expanded_structure() -> None:
    deps = wiring(graph_of(loop_in_branch("expanded")))
    assert set(deps) == {
        "flujo_inputs",
        "size",
        *iteration_ops("size__refine", range(1, 5), "draft", "score"),
        "size__refine__flujo_join",
        "size__small",
        "size__flujo_join",
        "publish",
        "flujo_context",
    }
    # the loop's first iteration is gated by the case; later ones by the previous gate
    assert deps["size__refine__i1__draft"] == {"draft": [("flujo_inputs", "draft")], "flujo_gate": [("size", "arm_0")]}
    assert deps["size__refine__i1__flujo_until"]["flujo_gate"] == [("size", "arm_0")]
    assert deps["size__refine__i2__draft"]["flujo_gate"] == [("size__refine__i1__flujo_until", "next")]
    assert deps["size__small"] == {"trail": [("flujo_inputs", "trail")], "flujo_gate": [("size", "arm_1")]}
    assert deps["publish"] == {"draft": [("size__flujo_join", "draft")], "score": [("size__flujo_join", "score")]}


def test_three_level_nesting_expanded_names_ops_by_their_whole_path() -> None:
    deps = wiring(graph_of(parallel_in_branch_in_loop("expanded")))
    assert {
        "outer__i2__turn",
        "outer__i2__route",
        "outer__i2__route__pair__x__px",
        "outer__i2__route__pair__y__py",
        "outer__i2__route__rest",
        "outer__i2__route__flujo_join",
        "outer__i2__flujo_until",
    } <= set(deps)
    assert deps["outer__i2__route__pair__x__px"] == {
        "a": [("outer__i1__route__flujo_join", "a")],
        "flujo_gate": [("outer__i2__route", "arm_0")],
    }
    assert deps["outer__i2__route__pair__y__py"] == {
        "b": [("outer__i1__route__flujo_join", "b")],
        "flujo_gate": [("outer__i2__route", "arm_0")],
    }
    deps = wiring(graph_of(branch_in_loop_in_branch("expanded")))
    assert deps["top__cycle__i2__half__first"] == {
        "trail": [("top__cycle__i1__half__flujo_join", "trail")],
        "flujo_gate": [("top__cycle__i2__half", "arm_0")],
    }
    assert deps["top__cycle__i1__tick"] == {"count": [("flujo_inputs", "count")], "flujo_gate": [("top", "arm_0")]}
    assert deps["top__flujo_join"]["decision"] == [("top", "decision")]
    assert ("top__cycle__flujo_join", "count") in deps["top__flujo_join"]["after"]


def test_loop_in_parallel_expanded_structure() -> None:
    deps = wiring(graph_of(loop_in_parallel("expanded")))
    assert set(deps) == {
        "flujo_inputs",
        *iteration_ops("fan__l__spin", range(1, 5), "spin_a"),
        "fan__l__spin__flujo_join",
        "fan__r__inc_b",
        "flujo_context",
    }
    assert deps["fan__r__inc_b"] == {"b": [("flujo_inputs", "b")]}
    assert deps["fan__l__spin__i1__spin_a"] == {"a": [("flujo_inputs", "a")]}


# --- multiprocess ----------------------------------------------------------------------------------------------


def test_expanded_loop_and_branch_run_under_the_multiprocess_executor(instance: DagsterInstance) -> None:
    run_config = {"ops": {"cf_review_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"n": 2}}}}}}}
    with execute_job(reconstructable(review_multiprocess_job), instance=instance, run_config=run_config) as result:
        assert result.success
        run_id = result.run_id
    # iteration 2 read iteration 1's draft, and the joins read the exiting iteration's and the taken arm's
    # values, each in another process
    assert load_final_context(review, run_id, instance=instance) == Review(n=2, draft="xx", verdict="accept:xx")
    graph = "cf_review_graph."
    assert step_keys(instance, run_id, DagsterEventType.STEP_START) == {
        f"{graph}{op}"
        for op in (
            "flujo_inputs",
            "refine__i1__draft",
            "refine__i1__flujo_until",
            "refine__i2__draft",
            "refine__i2__flujo_until",
            "refine__flujo_join",
            "check",
            "check__accept",
            "check__flujo_join",
            "flujo_context",
            "flujo_context_check",
        )
    }
    assert step_keys(instance, run_id, DagsterEventType.STEP_SKIPPED) == {
        f"{graph}refine__i3__draft",
        f"{graph}refine__i3__flujo_until",
        f"{graph}check__reject",
    }


class Needs(BaseModel):
    n: int
    r: int
    z: int = 0


@step(name="set_r", output_keys=["r"])
def set_r(n: int) -> int:
    return n


@step(name="set_z", output_keys=["z"])
def set_z(n: int) -> int:
    return -n


def test_a_key_never_produced_fails_the_last_op_instead_of_passing_silently(instance: DagsterInstance) -> None:
    # V-CTX1 refuses this pipeline; compile it anyway to check the last line of defence at run time
    pipeline = Pipeline(
        "needs", context=Needs, steps=[Branch("b", on=lambda n: n > 0, cases={True: [set_r]}, default=[set_z])]
    )
    assert [f.code for f in validate(pipeline).findings] == ["V-CTX1"]
    compiled = compile_pipeline(pipeline, translator=FlujoDagsterTranslator())
    job = Definitions(jobs=[compiled.job], resources=default_resources()).resolve_job_def("needs")
    config = {"ops": {"flujo_inputs": {"config": {"inputs": {"n": -1}}}}}
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    assert not result.success
    failed = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failed] == ["flujo_context"]
    error = failed[0].step_failure_data.error  # type: ignore[union-attr]
    assert error is not None and error.cause is not None
    assert error.cause.message.startswith(
        "flujo_dagster.errors.StorageError: key 'r' of pipeline 'needs' was never produced: step 'b__flujo_join' "
        f"did not write it in run {result.run_id}"
    )
