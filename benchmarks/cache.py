"""Never pay twice: the reviewed example (definitions/review.py) materialized three times on one persistent Dagster
instance (SQLite, telemetry off), with the agent-call cache on (the default):

1. first: an empty cache, every agent request is made;
2. second: the same inputs again: every request is answered by the cache, so none is made and nothing is paid;
3. after a prompt change: the `title` step's prompt is changed (a new code version: Dagster marks its asset
   downstream stale); only the requests whose messages changed are made.

The agents run on the example's scripted offline model (`definitions/offline.py`) at its stand-in price; requests are
counted where the model answers them (a `FunctionModel` around the scripted answer), costs are read back from each
run's step metadata (`run_pipeline(...).agent_calls`). Prints a table, then one JSON line:
{"bench": "cache", "requests_first": A, "requests_second": B, "requests_after_prompt_change": C,
 "cost_second_usd": D}

    .venv/bin/python benchmarks/cache.py
"""

import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from dagster import DagsterInstance
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from definitions.digest import sources
from definitions.offline import OFFLINE_MODEL_ID, OFFLINE_MODEL_NAME, OFFLINE_PRICE, scripted_answer
from definitions.review import (
    ReviewedDigest,
    approved,
    critique,
    draft,
    hold,
    publish,
    review,
    tags,
    titler,
    verdict,
)
from flujo_dagster import AgentRuntime, Branch, Loop, Parallel, Pipeline, agent_step, run_pipeline

INPUTS = {"topic": "typed agents"}
REQUESTS: list[int] = []


def counted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The example's scripted answer, each request counted."""
    REQUESTS.append(len(messages))
    return scripted_answer(messages, info)


def with_title_prompt(prompt: str) -> Pipeline:
    """The reviewed example as definitions/review.py builds it, with only the `title` step's prompt changed."""
    title = agent_step("title", agent=titler, prompt=prompt)
    return Pipeline(
        review.name,
        context=ReviewedDigest,
        steps=[
            sources,
            Loop("refine", body=[draft, critique], until=approved, max_iterations=3, on_exhausted="continue"),
            Parallel("extras", branches={"title": [title], "tags": [tags]}),
            Branch("route", on=verdict, cases={"publish": [publish], "revise": [hold]}),
        ],
        assets=list(review.assets),
        description=review.description,
    )


def one_pass(label: str, pipeline: Pipeline, instance: DagsterInstance, runtime: AgentRuntime) -> dict[str, object]:
    """Materialize every asset of `pipeline` once; the requests made, the cost paid, the cache hits, the time."""
    before = len(REQUESTS)
    started = time.perf_counter()
    result = run_pipeline(pipeline, INPUTS, resources={"agent_runtime": runtime}, instance=instance, log_level="ERROR")
    seconds = time.perf_counter() - started
    result.raise_for_failure()
    cost = sum((c.cost_usd for c in result.agent_calls), Decimal(0))
    hits = sum(c.cache_hits for c in result.agent_calls)
    saved = sum((c.saved_cost_usd for c in result.agent_calls), Decimal(0))
    requests = len(REQUESTS) - before
    return {"pass": label, "requests": requests, "hits": hits, "cost_usd": cost, "saved_usd": saved, "seconds": seconds}


def main() -> None:
    runtime = AgentRuntime(
        model=FunctionModel(counted, model_name=OFFLINE_MODEL_NAME), prices={OFFLINE_MODEL_ID: OFFLINE_PRICE}
    )
    changed = with_title_prompt("Give this digest about {topic} a short title:\n{draft}")
    with tempfile.TemporaryDirectory() as home:
        Path(home, "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.from_config(home) as instance:
            rows = [
                one_pass("first", review, instance, runtime),
                one_pass("second (same inputs)", review, instance, runtime),
                one_pass("after a prompt change", changed, instance, runtime),
            ]
    print(f"{'pass':<24} {'requests':>8} {'cache hits':>10} {'cost USD':>10} {'saved USD':>10} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['pass']:<24} {r['requests']:>8} {r['hits']:>10} {r['cost_usd']:>10.6f} {r['saved_usd']:>10.6f} "
            f"{r['seconds']:>8.2f}"
        )
    print(
        json.dumps(
            {
                "bench": "cache",
                "requests_first": rows[0]["requests"],
                "requests_second": rows[1]["requests"],
                "requests_after_prompt_change": rows[2]["requests"],
                "cost_second_usd": float(rows[1]["cost_usd"]),
            }
        )
    )


if __name__ == "__main__":
    main()
