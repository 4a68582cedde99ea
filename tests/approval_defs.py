"""Pipelines with approval gates, as reconstructable jobs for `execute_job` re-execution (resume).

Every agent request is appended to the file named by FLUJO_TEST_REQUEST_LOG, so a test can count the requests
across a pause and its resume (they run in different runs)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import JobDefinition
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Approval, Branch, Loop, Pipeline, Price, agent_step, build_definitions, step

REQUEST_LOG = "FLUJO_TEST_REQUEST_LOG"


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    with Path(os.environ[REQUEST_LOG]).open("a") as log:
        log.write(prompt + "\n")
    return ModelResponse(parts=[TextPart(f"draft about {prompt.split()[-1]}")])


class Post(BaseModel):
    topic: str
    draft: str = ""
    rounds: int = 0
    published: str = ""


class Edit(BaseModel):
    """What a reviewer may change: the draft."""

    draft: str


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
write = agent_step("write", agent=writer, prompt="Write about {topic}", output_key="draft")


@step(name="publish", output_keys=["published"])
def publish(draft: str) -> str:
    return f"published: {draft}"


@step(name="tick", output_keys=["rounds"])
def tick(rounds: int) -> int:
    return rounds + 1


gated = Pipeline("gated", context=Post, steps=[write, Approval("review", show=["draft"], decision=Edit), publish])
looped = Pipeline(
    "looped",
    context=Post,
    steps=[
        write,
        Loop(
            "refine",
            body=[
                tick,
                Branch(
                    "check",
                    on=lambda rounds: rounds >= 2,
                    cases={True: [Approval("sign_off", show=["draft"])]},
                    default=[],
                ),
            ],
            until=lambda rounds: rounds >= 2,
            max_iterations=3,
        ),
        publish,
    ],
)
runtime = AgentRuntime(
    model=FunctionModel(answer, model_name="scripted"),
    prices={"function:scripted": Price(input_per_mtok=0, output_per_mtok=0)},
)
defs = build_definitions(pipelines=[gated, looped], resources={"agent_runtime": runtime})


def gated_job() -> JobDefinition:
    """write -> review (approval) -> publish."""
    return defs.resolve_job_def("gated")


def looped_job() -> JobDefinition:
    """write -> refine loop (tick, then a gate in a branch that opens at round 2) -> publish."""
    return defs.resolve_job_def("looped")
