"""Overhead of flujo_dagster over hand-written Dagster ops: a chain of N function steps, one op per step.

Both variants run with the same executor (in process), the same persistent SQLite instance (telemetry off) and
the same IO manager (PydanticJsonIOManager). Runs alternate between the variants; each run is timed from launch
to finish (plan creation included, definition build excluded). flujo_dagster's own first and last ops count.
Prints a table, then one JSON line: {"bench": "overhead", "n": 200, "ratio": R, "ratio_n10": R10}.

    .venv/bin/python benchmarks/overhead.py [--sizes 10,50,200] [--reps 7,5,3]
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import (
    DagsterInstance,
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
from pydantic import BaseModel, create_model

from flujo_dagster import Pipeline, PydanticJsonIOManager, build_definitions, step
from flujo_dagster.dsl import FunctionStep

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _increment(**kwargs: int) -> int:
    (value,) = kwargs.values()
    return value + 1


def flujo_chain(n: int) -> tuple[JobDefinition, dict[str, Any], int]:
    """A flujo_dagster pipeline of n steps: step i reads k{i-1} and writes k{i}."""
    fields: dict[str, Any] = {f"k{i}": (int, ...) for i in range(n + 1)}
    context: type[BaseModel] = create_model("Chain", **fields)
    steps: list[FunctionStep] = [
        step(name=f"s{i}", input_keys=[f"k{i - 1}"], output_keys=[f"k{i}"])(_increment) for i in range(1, n + 1)
    ]
    pipeline = Pipeline("chain", context=context, steps=steps)
    defs = build_definitions(pipelines=[pipeline])
    job = defs.resolve_job_def("chain")
    config = {"ops": {"flujo_inputs": {"config": {"inputs": {"k0": 0}}}}, **QUIET}
    return job, config, n + 2


def _hand_op(i: int) -> OpDefinition:
    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Any:
        yield Output(inputs["x"] + 1 if inputs else 1, "result")

    ins = {"x": In(int)} if i > 1 else {}
    return OpDefinition(
        compute_fn=compute, name=f"s{i}", ins=ins, outs={"result": Out(int, io_manager_key="flujo_io_manager")}
    )


def hand_chain(n: int) -> tuple[JobDefinition, dict[str, Any], int]:
    """The same chain written by hand as Dagster ops."""
    ops = [_hand_op(i) for i in range(1, n + 1)]
    deps = {f"s{i}": {"x": DependencyDefinition(f"s{i - 1}", "result")} for i in range(2, n + 1)}
    job = GraphDefinition(name="hand_chain", node_defs=ops, dependencies=deps).to_job(
        resource_defs={"flujo_io_manager": PydanticJsonIOManager()}, executor_def=in_process_executor
    )
    return job, dict(QUIET), n


def _time(job: JobDefinition, config: dict[str, Any], instance: DagsterInstance) -> float:
    start = time.perf_counter()
    result = job.execute_in_process(run_config=config, instance=instance)
    elapsed = time.perf_counter() - start
    assert result.success
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--reps", default="9,5,3")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = [int(r) for r in args.reps.split(",")]
    variants: dict[str, Callable[[int], tuple[JobDefinition, dict[str, Any], int]]] = {
        "flujo_dagster": flujo_chain,
        "hand-written": hand_chain,
    }
    ratios: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(home) as instance:
            print(f"{'n':>5} {'variant':<14} {'ops':>5} {'median_s':>9} {'per_step_ms':>12} {'runs':>5}")
            for n, r in zip(sizes, reps, strict=True):
                built = {name: make(n) for name, make in variants.items()}
                for job, config, _ in built.values():  # warm up: first run pays one-off imports and schema work
                    _time(job, config, instance)
                samples: dict[str, list[float]] = {name: [] for name in variants}
                for _ in range(r):
                    for name, (job, config, _) in built.items():
                        samples[name].append(_time(job, config, instance))
                medians = {name: statistics.median(s) for name, s in samples.items()}
                for name, (_, _, ops) in built.items():
                    print(f"{n:>5} {name:<14} {ops:>5} {medians[name]:>9.3f} {1000 * medians[name] / n:>12.2f} {r:>5}")
                ratios[n] = medians["flujo_dagster"] / medians["hand-written"]
                print(f"{n:>5} {'ratio':<14} {'':>5} {ratios[n]:>9.3f}")
    largest = max(sizes)
    print(
        json.dumps(
            {
                "bench": "overhead",
                "n": largest,
                "ratio": round(ratios[largest], 3),
                "ratio_n10": round(ratios.get(10, float("nan")), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
