"""Pipelines with assets for review metadata, asset checks and lineage, as reconstructable jobs (a gate parks
the run and `resume` re-executes it from failure)."""

from __future__ import annotations

from dagster import JobDefinition
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import (
    AgentRuntime,
    Approval,
    ApprovalSettings,
    Branch,
    Check,
    Loop,
    Map,
    Pipeline,
    Price,
    agent_step,
    build_definitions,
    step,
)

PRICE = Price(input_per_mtok=1_000, output_per_mtok=2_000)


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("A draft about otters, in three short words.")])


class Source(BaseModel):
    title: str
    score: int


class Brief(BaseModel):
    topic: str
    sources: list[Source] = []
    draft: str = ""
    stats: dict[str, int] = {}
    summary: str = ""
    report: str = ""


@step
def sources(topic: str) -> list[Source]:
    return [Source(title=f"{topic} {i}", score=i) for i in range(3)]


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
write = agent_step("write", agent=writer, prompt="Write about {topic}", output_key="draft")


@step
def stats(sources: list[Source], draft: str) -> dict[str, int]:
    return {"sources": len(sources), "words": len(draft.split())}


@step(name="summarise", output_keys=["summary"])
def summarise(draft: str, topic: str) -> str:
    return "   " if topic == "blank" else f"summary: {draft}"


@step(name="publish", output_keys=["report"])
def publish(summary: str) -> str:
    return f"# Report\n\n{summary}"


CHECKS = [
    Check("summary", fn=lambda summary: bool(summary.strip()), name="summary_not_empty", blocking=True),
    Check("report", fn=lambda report: len(report) < 10, name="report_short", blocking=False),
]
reviewed = Pipeline(
    "reviewed",
    context=Brief,
    steps=[sources, write, Approval("review", show=["draft"]), stats, summarise, publish],
    assets=["sources", "draft", "stats", "summary", "report"],
    checks=CHECKS,
    context_asset=True,
)
checked = Pipeline(
    "checked",
    context=Brief,
    steps=[sources, write, stats, summarise, publish],
    assets=["draft", "summary", "report"],
    checks=CHECKS,
)
looped_review = Pipeline(
    "looped_review",
    context=Brief,
    steps=[
        Loop(
            "refine",
            body=[write, Approval("sign_off", show=["draft"])],
            until=lambda draft: bool(draft),
            max_iterations=2,
        )
    ],
    assets=["draft"],
)
runtime = AgentRuntime(model=FunctionModel(answer, model_name="reviewer"), prices={"function:reviewer": PRICE})
# Dagster OSS sets no dagster/user: these runs have no known requester
UNKNOWN_OK = ApprovalSettings(allow_unknown_requester=True)
defs = build_definitions(
    pipelines=[reviewed, checked, looped_review],
    resources={"agent_runtime": runtime, "approval_settings": UNKNOWN_OK},
)


def reviewed_job() -> JobDefinition:
    """sources -> write (agent) -> review (approval) -> stats -> summarise -> publish."""
    return defs.resolve_job_def("reviewed")


def looped_review_job() -> JobDefinition:
    """refine (Loop: write, then the sign_off gate) -> the loop's join produces draft."""
    return defs.resolve_job_def("looped_review")


def checked_job() -> JobDefinition:
    """sources -> write (agent) -> stats -> summarise (blocking check) -> publish."""
    return defs.resolve_job_def("checked")


# -- lineage across a Map (expanded), a Loop, an Approval and a Branch -------------------------------------------
class Flow(BaseModel):
    topic: str
    items: list[int] = []
    x: int = 0
    y: int = 0
    doubled: list[int] = []
    rounds: int = 0
    draft: str = ""
    verdict: str = ""
    report: str = ""


@step
def items(topic: str) -> list[int]:
    return list(range(len(topic)))


@step(name="double", output_keys=["y"])
def double(x: int) -> int:
    return 2 * x


@step(name="redraft", output_keys=["draft"])
def redraft(topic: str, doubled: list[int], rounds: int) -> str:
    return f"{topic}: {sum(doubled)} ({rounds})"


@step(name="tick", output_keys=["rounds"])
def tick(rounds: int) -> int:
    return rounds + 1


@step(name="accept", output_keys=["verdict"])
def accept(draft: str) -> str:
    return "accepted"


@step(name="refuse", output_keys=["verdict"])
def refuse(draft: str) -> str:
    return "refused"


@step(name="report", output_keys=["report"])
def report(draft: str, verdict: str) -> str:
    return f"{verdict}: {draft}"


lineage = Pipeline(
    "lineage",
    context=Flow,
    steps=[
        items,
        Map("each", over="items", item="x", body=[double], result="y", into="doubled", inline=False),
        Loop("refine", body=[redraft, tick], until=lambda rounds: rounds >= 2, max_iterations=3),
        Approval("sign_off", show=["draft"]),
        Branch("route", on=lambda draft: len(draft) > 5, cases={True: [accept]}, default=[refuse]),
        report,
    ],
    assets=["items", "doubled", "draft", "verdict", "report"],
    context_asset=True,
)
lineage_defs = build_definitions(pipelines=[lineage], resources={"approval_settings": UNKNOWN_OK})


def lineage_job() -> JobDefinition:
    """items -> each (Map, an op per element) -> refine (Loop) -> sign_off (approval) -> route (Branch) -> report."""
    return lineage_defs.resolve_job_def("lineage")
