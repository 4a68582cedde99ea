"""A one-agent-step pipeline whose `AgentRuntime` holds a model object and declared prices (values no Dagster
config can carry), in process and under the multiprocess executor: reconstructable targets for `execute_job`
(each step process imports this module and builds the same runtime again)."""

from __future__ import annotations

from dagster import JobDefinition, multiprocess_executor
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Pipeline, Price, agent_step, build_definitions

SCRIPTED_ID = "function:scripted"
PRICE = Price(input_per_mtok="1", output_per_mtok="2")
PATH = "note > agent:answer"
"""The agent step's path, as errors name it."""


class Note(BaseModel):
    topic: str = "agents"
    answer: str = ""


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Answers every prompt with the same marker text."""
    return ModelResponse(parts=[TextPart("scripted answer")], model_name="scripted")


note = Pipeline(
    "note",
    context=Note,
    steps=[agent_step("answer", agent=Agent("openai:gpt-5-mini", defer_model_check=True), prompt="About {topic}")],
)


def runtime(**prices: Price) -> AgentRuntime:
    """Every agent step on the scripted model, priced (and `test:test`, pydantic-ai's `test`, when given)."""
    return AgentRuntime(model=FunctionModel(scripted, model_name="scripted"), prices={SCRIPTED_ID: PRICE, **prices})


defs = build_definitions(pipelines=[note], resources={"agent_runtime": runtime(**{"test:test": PRICE})})
multiprocess_defs = build_definitions(
    pipelines=[note],
    resources={"agent_runtime": runtime(**{"test:test": PRICE})},
    # forkserver with this module preloaded, as tests/multiprocess_defs.py does
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.runtime_defs"]}}}
    ),
)


def note_job() -> JobDefinition:
    """The note job, in process."""
    return defs.resolve_job_def("note")


def note_multiprocess_job() -> JobDefinition:
    """The note job under the multiprocess executor."""
    return multiprocess_defs.resolve_job_def("note")
