"""LLM waits overlap: a Parallel of 8 branches and a Map over 32 items (max_concurrency=8), each waiting 1 s of
simulated model latency (a FunctionModel that sleeps; the call cache off, or every run after the first would be
answered from it), timed from launch to RUN_SUCCESS on the in-process
executor, next to 8 parallel hand-written Dagster ops that each await 1 s (in-process and multiprocess).

Prints a table, then one JSON line:
{"bench": "parallel", "branches": 8, "wall_s": W, "map_items": 32, "map_wall_s": M,
 "handwritten_inprocess_s": H1, "handwritten_multiprocess_s": H2}

    .venv/bin/python benchmarks/parallel.py [--reps 3]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from dagster import (
    DagsterInstance,
    GraphDefinition,
    JobDefinition,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    execute_job,
    in_process_executor,
    multiprocess_executor,
    reconstructable,
)
from pydantic import BaseModel, create_model
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Map, Parallel, Pipeline, Price, agent_step, build_definitions

BRANCHES, ITEMS, CONCURRENCY, LATENCY_S = 8, 32, 8, 1.0
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


async def slow_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Simulated provider latency: 1 s, then a short answer."""
    await anyio.sleep(LATENCY_S)
    return ModelResponse(parts=[TextPart("ok")], model_name="sleepy")


agent = Agent(FunctionModel(slow_model, model_name="sleepy"))
RUNTIME = {
    "agent_runtime": AgentRuntime(
        model=FunctionModel(slow_model, model_name="sleepy"),
        prices={"function:sleepy": Price(input_per_mtok=0, output_per_mtok=0)},
    )
}


def parallel_pipeline() -> Pipeline:
    fields: dict[str, Any] = {"topic": (str, ...)} | {f"answer_{i}": (str, "") for i in range(BRANCHES)}
    context: type[BaseModel] = create_model("Fan", **fields)
    branches = {
        f"b{i}": [agent_step(f"ask_{i}", agent=agent, prompt="{topic}", output_key=f"answer_{i}")]
        for i in range(BRANCHES)
    }
    return Pipeline("fan", context=context, steps=[Parallel("ask_all", branches=branches)], cache=False)


class Items(BaseModel):
    items: list[str]
    item: str = ""
    answer: str = ""
    answers: list[str] = []


def map_pipeline() -> Pipeline:
    body = [agent_step("ask", agent=agent, prompt="{item}", output_key="answer")]
    node = Map(
        "ask_each", over="items", item="item", body=body, result="answer", into="answers", max_concurrency=CONCURRENCY
    )
    return Pipeline("fan_map", context=Items, steps=[node], cache=False)


def _hand_op(i: int) -> OpDefinition:
    async def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Any:
        await anyio.sleep(LATENCY_S)
        yield Output("ok", "result")

    return OpDefinition(compute_fn=compute, name=f"ask_{i}", outs={"result": Out(str)})


def floor_inprocess() -> JobDefinition:
    """One async op awaiting 1 s, in-process executor: what any Dagster run of that wait costs here."""
    return GraphDefinition(name="floor", node_defs=[_hand_op(0)]).to_job(
        name="floor_inprocess", executor_def=in_process_executor
    )


def _hand_graph() -> GraphDefinition:
    return GraphDefinition(name="hand_fan", node_defs=[_hand_op(i) for i in range(BRANCHES)])


def hand_inprocess() -> JobDefinition:
    """8 independent async ops, in-process executor."""
    return _hand_graph().to_job(name="hand_fan_inprocess", executor_def=in_process_executor)


def hand_multiprocess() -> JobDefinition:
    """8 independent async ops, multiprocess executor (forkserver, code preloaded)."""
    executor = multiprocess_executor.configured({"start_method": {"forkserver": {}}})
    return _hand_graph().to_job(name="hand_fan_multiprocess", executor_def=executor)


def _timed_in_process(job: JobDefinition, config: dict[str, Any], instance: DagsterInstance) -> float:
    start = time.perf_counter()
    result = job.execute_in_process(run_config=config, instance=instance)
    elapsed = time.perf_counter() - start
    assert result.success
    return elapsed


def _timed_execute_job(target: Any, instance: DagsterInstance) -> float:
    start = time.perf_counter()
    with execute_job(reconstructable(target), instance=instance, run_config=QUIET) as result:
        assert result.success
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    fan, fan_map = parallel_pipeline(), map_pipeline()
    defs = build_definitions(pipelines=[fan, fan_map], resources=RUNTIME)
    fan_job, map_job = defs.resolve_job_def("fan"), defs.resolve_job_def("fan_map")
    fan_config = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "t"}}}}, **QUIET}
    map_config = {"ops": {"flujo_inputs": {"config": {"inputs": {"items": [str(i) for i in range(ITEMS)]}}}}, **QUIET}
    kinds = ("parallel", "map", "hand_inprocess", "hand_multiprocess", "floor")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(home) as instance:
            _timed_in_process(fan_job, fan_config, instance)  # warm up imports and schema work
            for _ in range(args.reps):
                samples["parallel"].append(_timed_in_process(fan_job, fan_config, instance))
                samples["map"].append(_timed_in_process(map_job, map_config, instance))
                samples["hand_inprocess"].append(_timed_execute_job(hand_inprocess, instance))
                samples["hand_multiprocess"].append(_timed_execute_job(hand_multiprocess, instance))
                samples["floor"].append(_timed_execute_job(floor_inprocess, instance))
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [
        ("flujo Parallel, 8 branches (1 op)", "in process", med["parallel"], LATENCY_S),
        (f"flujo Map, {ITEMS} items, max_concurrency={CONCURRENCY} (1 op)", "in process", med["map"], 4 * LATENCY_S),
        ("hand-written, 8 ops", "in process", med["hand_inprocess"], LATENCY_S),
        ("hand-written, 8 ops", "multiprocess", med["hand_multiprocess"], LATENCY_S),
        ("floor: hand-written, 1 op awaiting 1 s", "in process", med["floor"], LATENCY_S),
    ]
    print(f"{'shape':<48} {'executor':<13} {'median_s':>9} {'ideal_s':>8} {'runs':>5}")
    for shape, executor, seconds, ideal in rows:
        print(f"{shape:<48} {executor:<13} {seconds:>9.2f} {ideal:>8.1f} {args.reps:>5}")
    print(
        json.dumps(
            {
                "bench": "parallel",
                "branches": BRANCHES,
                "wall_s": round(med["parallel"], 2),
                "map_items": ITEMS,
                "map_wall_s": round(med["map"], 2),
                "handwritten_inprocess_s": round(med["hand_inprocess"], 2),
                "handwritten_multiprocess_s": round(med["hand_multiprocess"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
