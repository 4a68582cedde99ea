"""Pipelines with approval gates, as reconstructable jobs for `execute_job` re-execution (resume).

Every agent request is appended to the file named by FLUJO_TEST_REQUEST_LOG, so a test can count the requests
across a pause and its resume (they run in different runs)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterInstance, JobDefinition, ReexecutionOptions
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import (
    AgentRuntime,
    Approval,
    ApprovalSettings,
    Branch,
    Loop,
    Pipeline,
    Price,
    agent_step,
    build_definitions,
    step,
)
from flujo_dagster.adapter.control.approvals import PendingApproval
from flujo_dagster.adapter.control.resume_steps import resume_step_keys
from flujo_dagster.runtime.approvals import Decision

REQUEST_LOG = "FLUJO_TEST_REQUEST_LOG"


def bound(waiting: PendingApproval, **fields: object) -> Decision:
    """A decision record written by hand, bound to the run state of parked gate `waiting` (as `decide` binds
    it): `fields` give the verdict, the reviewer and anything else."""
    binding = {"run_id": waiting.run_id, "gate": waiting.gate, "path": waiting.path}
    hashes = {"payload_hash": waiting.payload_hash, "state_hash": waiting.state_hash}
    return Decision.model_validate({**binding, **hashes, **fields})


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


class Brief(BaseModel):
    topic: str
    outline: str = ""
    draft: str = ""
    published: str = ""


@step(name="plan", output_keys=["outline"])
def plan(topic: str) -> str:
    return f"outline of {topic}"


# assets before the gate (`outline`) and after it (`published`, and the final context)
briefed = Pipeline(
    "briefed",
    context=Brief,
    steps=[plan, write, Approval("review", show=["draft"]), publish],
    assets=["outline", "published"],
)
runtime = AgentRuntime(
    model=FunctionModel(answer, model_name="scripted"),
    prices={"function:scripted": Price(input_per_mtok=0, output_per_mtok=0)},
)
# Dagster OSS sets no dagster/user: tests that name a requester tag their runs with one
UNKNOWN_OK = ApprovalSettings(allow_unknown_requester=True)
defs = build_definitions(
    pipelines=[gated, looped, briefed], resources={"agent_runtime": runtime, "approval_settings": UNKNOWN_OK}
)


def by_hand(instance: DagsterInstance, run_id: str) -> ReexecutionOptions:
    """A re-execution of parked run `run_id` as a user launches it from the UI ("re-execute selected": its parked
    gates and what they held; a parked run ended SUCCESS, which Dagster does not re-execute from failure)."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return ReexecutionOptions(parent_run_id=run_id, step_selection=resume_step_keys(instance, run))


def gated_job() -> JobDefinition:
    """write -> review (approval) -> publish."""
    return defs.resolve_job_def("gated")


class Tiny(BaseModel):
    a: int = 0


class Loose(BaseModel):
    """A decision model looser than the key it edits (`a` is an int key)."""

    a: str


loose = Pipeline("loose", context=Tiny, steps=[Approval("g", show=["a"], decision=Loose)])
loose_defs = build_definitions(pipelines=[loose], resources={"approval_settings": UNKNOWN_OK})


def loose_job() -> JobDefinition:
    """A gate whose decision model takes any text for the int key it shows."""
    return loose_defs.resolve_job_def("loose")


def looped_job() -> JobDefinition:
    """write -> refine loop (tick, then a gate in a branch that opens at round 2) -> publish."""
    return defs.resolve_job_def("looped")


class Source(BaseModel):
    id: str
    url: str = ""


class Reading(BaseModel):
    topic: str = ""
    sources: list[Source] = []
    limit: int = 3


class Curate(BaseModel):
    """What a reviewer may change: the sources (each needs an id) and the limit."""

    sources: list[Source] | None = None
    limit: int | None = None


@step(name="gather", output_keys=["sources"])
def gather(topic: str) -> list[Source]:
    return [Source(id="a", url=f"https://example.com/{topic}")]


sourced = Pipeline(
    "sourced", context=Reading, steps=[gather, Approval("curate", show=["sources", "limit"], decision=Curate)]
)
sourced_defs = build_definitions(pipelines=[sourced], resources={"approval_settings": UNKNOWN_OK})


def sourced_job() -> JobDefinition:
    """gather -> curate (approval): edits of `sources` (a list of models) and `limit` (an int)."""
    return sourced_defs.resolve_job_def("sourced")
