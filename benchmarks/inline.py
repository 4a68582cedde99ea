"""An inline group against its floor: a chain of N function steps run as ONE `Group(..., inline=True)` op, next
to the same work as one hand-written Dagster op calling the same functions in a loop.

Step i reads k{i-1} and writes k{i}. Both variants run in process on the same persistent SQLite instance
(telemetry off) with the same IO manager (PydanticJsonIOManager); runs alternate between the variants; each run
is timed from launch to finish (plan creation included, definition build excluded) and medians are reported.
flujo_dagster's own first and last ops (`flujo_inputs`, `flujo_context`) count. Events are every event the
instance's event log holds for one flujo_dagster run (all types): a fused inline op's do not grow with N.
Prints a table, then one JSON line:
{"bench": "inline", "n": 300, "ms_per_step": X, "ratio_to_floor": R, "events_n10": E10, "events_n300": E300}.

    .venv/bin/python benchmarks/inline.py [--sizes 10,100,300] [--reps 5]
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
    GraphDefinition,
    JobDefinition,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    in_process_executor,
)
from pydantic import BaseModel, create_model

from flujo_dagster import Pipeline, PydanticJsonIOManager, build_definitions, step
from flujo_dagster.dsl import FunctionStep, Group

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _increment(**kwargs: int) -> int:
    (value,) = kwargs.values()
    return value + 1


def flujo_inline(n: int) -> tuple[JobDefinition, dict[str, Any]]:
    """A pipeline whose only step is an inline group of n steps: step i reads k{i-1} and writes k{i}."""
    fields: dict[str, Any] = {f"k{i}": (int, ...) for i in range(n + 1)}
    context: type[BaseModel] = create_model("Chain", **fields)
    steps: list[FunctionStep] = [
        step(name=f"s{i}", input_keys=[f"k{i - 1}"], output_keys=[f"k{i}"])(_increment) for i in range(1, n + 1)
    ]
    pipeline = Pipeline("chain", context=context, steps=[Group("chain", steps=steps, inline=True)])
    job = build_definitions(pipelines=[pipeline]).resolve_job_def("chain")
    return job, {"ops": {"flujo_inputs": {"config": {"inputs": {"k0": 0}}}}, **QUIET}


def floor(n: int) -> tuple[JobDefinition, dict[str, Any]]:
    """The same work as one hand-written op: the same function called n times, the last value stored."""

    def compute(context: OpExecutionContext, _inputs: dict[str, Any]) -> Any:
        value = 0
        for i in range(1, n + 1):
            value = _increment(**{f"k{i - 1}": value})
        yield Output(value, "result")

    op = OpDefinition(compute_fn=compute, name="chain", outs={"result": Out(int, io_manager_key="flujo_io_manager")})
    job = GraphDefinition(name="floor", node_defs=[op]).to_job(
        resource_defs={"flujo_io_manager": PydanticJsonIOManager()}, executor_def=in_process_executor
    )
    return job, dict(QUIET)


def _run(job: JobDefinition, config: dict[str, Any], instance: DagsterInstance) -> tuple[float, int]:
    """Wall time of one run, launch to finish, and the number of events in its event log."""
    start = time.perf_counter()
    result = job.execute_in_process(run_config=config, instance=instance)
    elapsed = time.perf_counter() - start
    assert result.success
    return elapsed, len(instance.all_logs(result.run_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,300")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants: dict[str, Callable[[int], tuple[JobDefinition, dict[str, Any]]]] = {
        "flujo_inline": flujo_inline,
        "floor": floor,
    }
    medians: dict[int, dict[str, float]] = {}
    events: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(home) as instance:
            print(f"{'n':>5} {'variant':<13} {'median_s':>9} {'ms_per_step':>12} {'events':>7} {'runs':>5}")
            for n in sizes:
                built = {name: make(n) for name, make in variants.items()}
                for job, config in built.values():  # warm up: first run pays one-off imports and schema work
                    _run(job, config, instance)
                samples: dict[str, list[float]] = {name: [] for name in variants}
                counted: dict[str, set[int]] = {name: set() for name in variants}
                for _ in range(args.reps):
                    for name, (job, config) in built.items():
                        elapsed, count = _run(job, config, instance)
                        samples[name].append(elapsed)
                        counted[name].add(count)
                medians[n] = {name: statistics.median(s) for name, s in samples.items()}
                events[n] = max(counted["flujo_inline"])
                for name in variants:
                    shown = "/".join(map(str, sorted(counted[name])))
                    print(
                        f"{n:>5} {name:<13} {medians[n][name]:>9.3f} {1000 * medians[n][name] / n:>12.3f} "
                        f"{shown:>7} {args.reps:>5}"
                    )
                print(f"{n:>5} {'ratio':<13} {medians[n]['flujo_inline'] / medians[n]['floor']:>9.3f}")
    largest = max(sizes)
    print(
        json.dumps(
            {
                "bench": "inline",
                "n": largest,
                "ms_per_step": round(1000 * medians[largest]["flujo_inline"] / largest, 3),
                "ratio_to_floor": round(medians[largest]["flujo_inline"] / medians[largest]["floor"], 3),
                "events_n10": events.get(10),
                "events_n300": events.get(300),
            }
        )
    )


if __name__ == "__main__":
    main()
