"""Pipelines for the subset tests: a chain of three assets whose last (an agent step) reads only the one before
it, and one whose last asset also needs a key that is not an asset. The model echoes its prompt, counts every
request (in memory, and in the file `FLUJO_TEST_REQUEST_LOG` names when set) and fails while the file
`FLUJO_TEST_FAIL_MARKER` names exists. A reconstructable target for execute_job (`defs`)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Literal

from dagster import JobDefinition
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Pipeline, Price, StaticPartitions, agent_step, build_definitions, step
from tests.approval_defs import defs as approval_defs

FAIL_MARKER = "FLUJO_TEST_FAIL_MARKER"
REQUEST_LOG = "FLUJO_TEST_REQUEST_LOG"
CALLS: Counter[str] = Counter()


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Echoes the prompt, so a value shows what it was made from; counts every request."""
    prompt = next(p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    marker = os.environ.get(FAIL_MARKER)
    if marker and Path(marker).exists():
        raise ConnectionError("provider unavailable (test marker present)")
    CALLS["model"] += 1
    if log := os.environ.get(REQUEST_LOG):
        with open(log, "a") as file:
            file.write(f"{prompt}\n")
    return ModelResponse(parts=[TextPart(f"<{prompt}>")])


RUNTIME = AgentRuntime(
    model=FunctionModel(answer, model_name="counted"),
    prices={"function:counted": Price(input_per_mtok=0, output_per_mtok=0)},
)
AGENT = Agent("openai:gpt-5-mini", defer_model_check=True)


class Chain(BaseModel):
    topic: Literal["a", "b", "c"] = "a"
    facts: str | None = None
    outline: str | None = None
    note: str | None = None
    report: str | None = None


@step
def outline(facts: str | None) -> str:
    CALLS["outline"] += 1
    return f"outline of {facts}"


def chain(*, partitioned: bool = False) -> Pipeline:
    """Three assets in a row; the last (an agent step) reads only the one before it."""
    return Pipeline(
        "chain",
        context=Chain,
        steps=[
            agent_step("facts", agent=AGENT, prompt="facts about {topic}"),
            outline,
            agent_step("report", agent=AGENT, prompt="report on {outline}"),
        ],
        assets=["facts", "outline", "report"],
        partitions=StaticPartitions(keys=["a", "b", "c"], input_key="topic") if partitioned else None,
        cache=False,  # the tests count which steps a subset runs: every run makes its requests
    )


def noted() -> Pipeline:
    """The last asset needs `note`, a key that is not an asset: a subset of it computes the note again."""
    return Pipeline(
        "noted",
        context=Chain,
        steps=[
            agent_step("facts", agent=AGENT, prompt="facts about {topic}"),
            agent_step("note", agent=AGENT, prompt="a note on {topic}"),
            agent_step("report", agent=AGENT, prompt="report on {facts} with {note}"),
        ],
        assets=["facts", "report"],
        cache=False,  # the tests count which steps a subset runs: every run makes its requests
    )


defs = build_definitions(pipelines=[chain()], resources={"agent_runtime": RUNTIME})


def chain_job() -> JobDefinition:
    """The chain's asset job (reconstructable)."""
    return defs.resolve_job_def("chain")


def briefed_job() -> JobDefinition:
    """plan (asset `outline`) -> write -> review (approval) -> publish (asset `published`), reconstructable."""
    return approval_defs.resolve_job_def("briefed")
