"""Provider concurrency: each agent op is in a Dagster pool (default `flujo/<provider>`), so a deployment caps
concurrent calls to a provider across runs; inline ops honour the pool's limit within their process."""

from __future__ import annotations

import anyio
from dagster import DagsterInstance
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, FlujoDagsterTranslator, Parallel, Pipeline, Price, agent_step, run_pipeline
from flujo_dagster.adapter.compile.compiler import compile_pipeline


class Three(BaseModel):
    a0: str = ""
    a1: str = ""
    a2: str = ""


def tracked(peak: list[int]) -> FunctionModel:
    """A model that records the most requests it ever had in flight at once."""
    running = [0]

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await anyio.sleep(0.1)
        running[0] -= 1
        return ModelResponse(parts=[TextPart("ok")])

    return FunctionModel(answer, model_name="tracked")


def three(**options: str) -> Pipeline:
    agent = Agent("openai:gpt-5-mini", defer_model_check=True)
    branches = {
        f"b{i}": [agent_step(f"ask{i}", agent=agent, prompt="hi", output_key=f"a{i}", **options)] for i in range(3)
    }
    return Pipeline("three", context=Three, steps=[Parallel("all", branches=branches, inline=False)], cache=False)


def test_agent_ops_are_in_a_pool_per_provider_unless_named() -> None:
    graph = compile_pipeline(three(), translator=FlujoDagsterTranslator()).graph
    assert {graph.node_named(f"all__b{i}__ask{i}").definition.pool for i in range(3)} == {"flujo/openai"}
    named = compile_pipeline(three(pool="llm"), translator=FlujoDagsterTranslator()).graph
    assert named.node_named("all__b0__ask0").definition.pool == "llm"


def test_an_inline_parallel_honours_the_pool_limit(instance: DagsterInstance) -> None:
    branches = dict(three().steps[0].branches)  # three identical requests: not cached, or one would serve them all
    pipeline = Pipeline("three", context=Three, steps=[Parallel("all", branches=branches)], cache=False)
    for limit, expected_peak in ((None, 3), (1, 1), (2, 2)):
        if limit is not None:
            instance.event_log_storage.set_concurrency_slots("flujo/openai", limit)
        peak = [0]
        runtime = AgentRuntime(
            model=tracked(peak), prices={"function:tracked": Price(input_per_mtok=0, output_per_mtok=0)}
        )
        result = run_pipeline(pipeline, {}, instance=instance, resources={"agent_runtime": runtime}, log_level="ERROR")
        assert result.success, result.error
        assert peak[0] == expected_peak, (limit, peak)
