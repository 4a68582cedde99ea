"""Scale: (a) expanded pipelines of 250, 500 and 1,000 ops (chains, branches, loops): build, validate_loadable,
job snapshot and execution-plan creation, next to the same chains written by hand as Dagster ops; (b) pipelines
of 1,000, 5,000 and 10,000 DSL steps written as a user would for that size (inline groups of 100 steps):
validate, and build + validate_loadable + execution plan.

Prints a table, then one JSON line:
{"bench": "scale", "steps": 10000, "validate_s": V, "build_s": B, "growth": G, "expanded_ratio": E}

    .venv/bin/python benchmarks/scale.py [--reps 3]
"""

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from dagster import (
    Definitions,
    DependencyDefinition,
    GraphDefinition,
    In,
    JobDefinition,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    in_process_executor,
)
from dagster._core.execution.api import create_execution_plan  # private: plan creation, as every launch pays it
from pydantic import BaseModel, create_model

from flujo_dagster import Branch, Group, Loop, Pipeline, PydanticJsonIOManager, build_definitions, step, validate
from flujo_dagster.dsl import FunctionStep, Step


def _increment(**kwargs: int) -> int:
    (value,) = kwargs.values()
    return value + 1


def _context(keys: int) -> type[BaseModel]:
    fields: dict[str, Any] = {"k0": (int, ...)} | {f"k{i}": (int, 0) for i in range(1, keys + 1)}
    return create_model(f"Ctx{keys}", **fields)


def _chain_steps(n: int, offset: int = 0) -> list[FunctionStep]:
    return [
        step(name=f"s{offset + i}", input_keys=[f"k{offset + i - 1}"], output_keys=[f"k{offset + i}"])(_increment)
        for i in range(1, n + 1)
    ]


def chain(ops: int) -> Pipeline:
    return Pipeline("chain", context=_context(ops), steps=_chain_steps(ops - 2))


def branches(ops: int) -> Pipeline:
    count = (ops - 2) // 4  # router, two one-step arms, join
    steps: list[Step] = []
    for i in range(1, count + 1):
        zero = step(name=f"zero{i}", input_keys=[f"k{i - 1}"], output_keys=[f"k{i}"])(_increment)
        other = step(name=f"other{i}", input_keys=[f"k{i - 1}"], output_keys=[f"k{i}"])(_increment)
        steps.append(Branch(f"b{i}", on=f"k{i - 1}", cases={0: [zero]}, default=[other]))
    return Pipeline("branches", context=_context(count), steps=steps)


def loop(ops: int) -> Pipeline:
    body = 9
    iterations = (ops - 3) // (body + 1)
    fields: dict[str, Any] = {"k0": (int, ...)} | {f"k{i}": (int, 0) for i in range(1, body + 1)}
    context = create_model("LoopCtx", **fields)
    steps = _chain_steps(body)
    return Pipeline(
        "loop",
        context=context,
        steps=[Loop("l", body=steps, until=lambda k9: k9 > 10**9, max_iterations=iterations, on_exhausted="continue")],
    )


def grouped(dsl_steps: int, group_size: int = 100) -> Pipeline:
    groups = [
        Group(f"g{g}", steps=_chain_steps(group_size, offset=g * group_size), inline=True)
        for g in range(dsl_steps // group_size)
    ]
    return Pipeline("grouped", context=_context(dsl_steps), steps=groups)


def _hand_op(i: int) -> OpDefinition:
    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Any:
        yield Output(inputs["x"] + 1 if inputs else 1, "result")

    return OpDefinition(
        compute_fn=compute,
        name=f"s{i}",
        ins={"x": In(int)} if i > 1 else {},
        outs={"result": Out(int, io_manager_key="flujo_io_manager")},
    )


def hand_chain(ops: int) -> JobDefinition:
    defs = [_hand_op(i) for i in range(1, ops + 1)]
    deps = {f"s{i}": {"x": DependencyDefinition(f"s{i - 1}", "result")} for i in range(2, ops + 1)}
    job = GraphDefinition(name="hand", node_defs=defs, dependencies=deps).to_job(
        resource_defs={"flujo_io_manager": PydanticJsonIOManager()}, executor_def=in_process_executor
    )
    return Definitions(jobs=[job]).resolve_job_def("hand")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure_flujo(make: Callable[[], Pipeline]) -> dict[str, float]:
    pipeline = make()
    build, defs = _timed(lambda: build_definitions(pipelines=[pipeline]))
    resolve, job = _timed(lambda: defs.resolve_job_def(pipeline.name))
    loadable, _ = _timed(lambda: Definitions.validate_loadable(defs))
    snapshot, _ = _timed(job.get_job_snapshot)
    config = {"ops": {"flujo_inputs": {"config": {"inputs": {"k0": 0}}}}}
    plan, _ = _timed(lambda: create_execution_plan(job, run_config=config))
    return {"build": build + resolve, "loadable": loadable, "snapshot": snapshot, "plan": plan}


def measure_hand(ops: int) -> dict[str, float]:
    build, job = _timed(lambda: hand_chain(ops))
    defs = Definitions(jobs=[job])
    loadable, _ = _timed(lambda: Definitions.validate_loadable(defs))
    snapshot, _ = _timed(job.get_job_snapshot)
    plan, _ = _timed(lambda: create_execution_plan(job))
    return {"build": build, "loadable": loadable, "snapshot": snapshot, "plan": plan}


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def main() -> None:
    # Dagster's own graph code recurses once per op in a chain: the hand-written 1,000-op chain can exceed
    # Python's default limit of 1,000 frames (it did once in two runs here). flujo's build stays below it.
    sys.setrecursionlimit(10_000)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"{'shape':<28} {'ops':>6} {'build_s':>8} {'loadable_s':>10} {'snapshot_s':>10} {'plan_s':>8} {'total_s':>8}")
    totals: dict[tuple[str, int], float] = {}
    for ops in (250, 500, 1000):
        shapes: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("flujo chain", functools.partial(measure_flujo, functools.partial(chain, ops))),
            ("hand-written chain", functools.partial(measure_hand, ops)),
            ("flujo branches", functools.partial(measure_flujo, functools.partial(branches, ops))),
            ("flujo loop", functools.partial(measure_flujo, functools.partial(loop, ops))),
        ]
        for name, run in shapes:
            m = _median([run() for _ in range(args.reps)])
            total = sum(m.values())
            totals[(name, ops)] = total
            print(
                f"{name:<28} {ops:>6} {m['build']:>8.3f} {m['loadable']:>10.3f} {m['snapshot']:>10.3f} "
                f"{m['plan']:>8.3f} {total:>8.3f}"
            )
    ratio = totals[("flujo chain", 1000)] / totals[("hand-written chain", 1000)]
    print(f"expanded ratio at 1,000 ops (flujo chain / hand-written chain): {ratio:.3f}")
    print(f"\n{'DSL steps (inline groups of 100)':<34} {'ops':>6} {'validate_s':>10} {'build+plan_s':>13}")
    results: dict[int, tuple[float, float]] = {}
    for dsl_steps in (1000, 5000, 10000):
        samples = []
        for _ in range(args.reps):
            pipeline = grouped(dsl_steps)
            v, report = _timed(functools.partial(validate, pipeline))
            assert report.ok, report.render()
            m = measure_flujo(functools.partial(grouped, dsl_steps))
            samples.append({"validate": v, "build": m["build"] + m["loadable"] + m["plan"]})
        med = _median(samples)
        results[dsl_steps] = (med["validate"], med["build"])
        print(f"{dsl_steps:<34} {dsl_steps // 100 + 2:>6} {med['validate']:>10.3f} {med['build']:>13.3f}")
    validate_s, build_s = results[10000]
    growth = build_s / results[5000][1]
    print(
        json.dumps(
            {
                "bench": "scale",
                "steps": 10000,
                "validate_s": round(validate_s, 3),
                "build_s": round(build_s, 3),
                "growth": round(growth, 3),
                "expanded_ratio": round(ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
