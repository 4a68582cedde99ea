"""Pipelines for the tests of one code location holding several flujo definitions (tests/test_location.py): an
agent step on a scripted model with a known usage and price, then success, a failure, or a park at a gate."""

from __future__ import annotations

from dagster import Failure
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Approval, Pipeline, Price, agent_step, step

INPUTS = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """40 input and 10 output tokens per request: $0.00006 at PRICE."""
    return ModelResponse(parts=[TextPart("a draft")], usage=RequestUsage(input_tokens=40, output_tokens=10))


PRICE = Price(input_per_mtok=1, output_per_mtok=2)
runtime = AgentRuntime(model=FunctionModel(answer, model_name="metered"), prices={"function:metered": PRICE})


other_runtime = AgentRuntime(
    model=FunctionModel(answer, model_name="metered"),
    prices={"function:metered": Price(input_per_mtok=3, output_per_mtok=4)},
)
"""Differs from `make_runtime()` by its price (an `AgentRuntime` equal by value to another is shared with it)."""


def make_runtime() -> AgentRuntime:
    """A factory of a runtime, named by import path in a component's `agent_runtime`."""
    return AgentRuntime(model=FunctionModel(answer, model_name="metered"), prices={"function:metered": PRICE})


class Post(BaseModel):
    topic: str
    draft: str = ""
    published: str = ""


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
# cache=False: the tests count each run's own requests and cost (a cached answer would cost $0)
write = agent_step("write", agent=writer, prompt="Write about {topic}", output_key="draft", cache=False)
rewrite = agent_step("rewrite", agent=writer, prompt="Rewrite {draft}", output_key="draft", cache=False)


@step(name="publish", output_keys=["published"])
def publish(draft: str) -> str:
    return f"published: {draft}"


@step(name="explode", output_keys=["published"])
def explode(draft: str) -> str:
    raise Failure("the publisher is down")


costed = Pipeline("costed", context=Post, steps=[write, rewrite, publish])
failing = Pipeline("failing", context=Post, steps=[write, explode])
gated = Pipeline("gated_cost", context=Post, steps=[write, Approval("review", show=["draft"]), publish])
plain = Pipeline("plain", context=Post, steps=[publish])
drafted = Pipeline("drafted", context=Post, steps=[write, publish], assets=["draft"])
gated_two = Pipeline("gated_two", context=Post, steps=[write, Approval("review", show=["draft"]), publish])
gated_outside = Pipeline("gated_outside", context=Post, steps=[write, Approval("review", show=["draft"]), publish])
DRAFTED_INPUTS = {"ops": {"drafted_graph": INPUTS}}
