"""An inline Map and an inline Parallel of agent steps on a model that counts every request it gets (one line per
request in a log file) and fails the requests about `bad` while a marker file exists. Both paths come from
environment variables, so that a reconstructed job (a re-execution) behaves the same way. A reconstructable
target for execute_job."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import JobDefinition
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Map, Parallel, Pipeline, Price, agent_step, build_definitions

FAIL_MARKER = "FLUJO_TEST_CHECKPOINT_FAIL_MARKER"
REQUEST_LOG = "FLUJO_TEST_CHECKPOINT_REQUEST_LOG"
PRICE = Price(input_per_mtok=1, output_per_mtok=2)
"""Not free, so that a reused item's zero cost is seen to be zero."""


def _prompt(messages: list[ModelMessage]) -> str:
    return next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = _prompt(messages)
    with open(os.environ[REQUEST_LOG], "a") as log:  # every request counts, failed ones too
        log.write(prompt + "\n")
    if "bad" in prompt and Path(os.environ[FAIL_MARKER]).exists():
        raise ConnectionError("provider unavailable (test marker present)")
    return ModelResponse(parts=[TextPart(f"notes on {prompt.removeprefix('about ')}")])


class Topics(BaseModel):
    topics: list[str]
    topic: str = ""
    note: str = ""
    notes: list[str] = Field(default_factory=list)


class Pair(BaseModel):
    subject: str
    left: str = ""
    right: str = ""


agent = Agent("openai:gpt-5-mini", defer_model_check=True)
# cache=False on every agent step: the tests count the requests a re-execution makes (checkpoints, not the call
# cache, must spare the finished items)
summarize = agent_step("summarize", agent=agent, prompt="about {topic}", output_key="note", cache=False)
each = Pipeline(
    "ckpt_map",
    context=Topics,
    steps=[Map("each", over="topics", item="topic", body=[summarize], result="note", into="notes")],
)
both = Pipeline(
    "ckpt_parallel",
    context=Pair,
    steps=[
        Parallel(
            "both",
            branches={
                "left": [agent_step("ask_left", agent=agent, prompt="about {subject}", output_key="left", cache=False)],
                "right": [
                    agent_step("ask_right", agent=agent, prompt="about bad {subject}", output_key="right", cache=False)
                ],
            },
        )
    ],
)
defs = build_definitions(
    pipelines=[each, both],
    resources={
        "agent_runtime": AgentRuntime(
            model=FunctionModel(_answer, model_name="counted"), prices={"function:counted": PRICE}
        )
    },
)


def map_job() -> JobDefinition:
    """The inline Map whose `bad` item fails while the marker exists."""
    return defs.resolve_job_def("ckpt_map")


def parallel_job() -> JobDefinition:
    """The inline Parallel whose `right` branch fails while the marker exists."""
    return defs.resolve_job_def("ckpt_parallel")
