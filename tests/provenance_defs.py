"""Provenance: a pipeline with two approval gates in a row and assets before, between and after them, under the
multiprocess executor (a reconstructable target for execute_job and resume)."""

from __future__ import annotations

from dagster import JobDefinition, multiprocess_executor
from pydantic import BaseModel

from flujo_dagster import Approval, ApprovalSettings, Branch, Map, Pipeline, build_definitions, step


class Story(BaseModel):
    topic: str
    outline: str = ""
    draft: str = ""
    summary: str = ""
    title: str = ""
    report: str = ""


class Edit(BaseModel):
    """What the first reviewer may change: the draft."""

    draft: str


@step(name="plan", output_keys=["outline"])
def plan(topic: str) -> str:
    return f"outline of {topic}"


@step(name="write", output_keys=["draft"])
def write(outline: str) -> str:
    return f"draft from {outline}"


@step(name="summarise", output_keys=["summary"])
def summarise(draft: str) -> str:
    return f"summary: {draft}"


@step(name="headline", output_keys=["title"])
def headline(draft: str) -> str:
    return draft.upper()


@step(name="publish", output_keys=["report"])
def publish(summary: str, outline: str) -> str:
    return f"# {outline}\n\n{summary}"


provenanced = Pipeline(
    "provenanced",
    context=Story,
    steps=[
        plan,
        write,
        Approval("review", show=["draft"], decision=Edit),
        summarise,
        headline,
        Approval("final", show=["summary"]),
        publish,
    ],
    # outline: before both gates; title: between them; summary: shown by the second; report: after both
    assets=["outline", "title", "summary", "report"],
    context_asset=True,
)


class Routed(BaseModel):
    topic: str
    risky: bool = True
    draft: str = ""
    report: str = ""


@step(name="draft_it", output_keys=["draft"])
def draft_it(topic: str) -> str:
    return f"draft about {topic}"


@step(name="ship", output_keys=["report"])
def ship(draft: str) -> str:
    return f"published: {draft}"


branched = Pipeline(
    "branched",
    context=Routed,
    # a risky draft is reviewed; a safe one goes straight on: `report` is downstream of the gate on one path only
    steps=[draft_it, Branch("route", on="risky", cases={True: [Approval("check", show=["draft"])]}, default=[]), ship],
    assets=["report"],
)


class Batch(BaseModel):
    topic: str
    xs: list[str] = ["a", "b", "c"]
    x: str = ""
    draft: str = ""
    published: str = ""
    posts: list[str] = []
    report: str = ""


class Redraft(BaseModel):
    draft: str


@step(name="draft_x", output_keys=["draft"])
def draft_x(topic: str, x: str) -> str:
    return f"{topic} {x}"


@step(name="publish_x", output_keys=["published"])
def publish_x(draft: str) -> str:
    return f"published: {draft}"


@step(name="roundup", output_keys=["report"])
def roundup(posts: list[str]) -> str:
    return "; ".join(posts)


mapped = Pipeline(
    "mapped",
    context=Batch,
    # each element has its own gate; `report` is downstream of all three
    steps=[
        Map(
            "each",
            over="xs",
            item="x",
            body=[draft_x, Approval("check", show=["draft"], decision=Redraft), publish_x],
            result="published",
            into="posts",
            inline=False,
        ),
        roundup,
    ],
    assets=["report"],
)

# in process (flujo's default): under the multiprocess executor, the Map's elements park in parallel, and Dagster's
# add_run_tags can lose one of two concurrent writes to a run's tags (a request tag), see the issue 14 note
mapped_defs = build_definitions(
    pipelines=[mapped], resources={"approval_settings": ApprovalSettings(allow_unknown_requester=True)}
)

defs = build_definitions(
    pipelines=[provenanced, branched],
    resources={"approval_settings": ApprovalSettings(allow_unknown_requester=True)},
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.provenance_defs"]}}}
    ),
)


def provenanced_job() -> JobDefinition:
    """plan -> write -> review (approval, edits the draft) -> summarise -> headline -> final (approval, shows
    summary) -> publish."""
    return defs.resolve_job_def("provenanced")


def branched_job() -> JobDefinition:
    """draft_it -> route (risky: check, an approval) -> ship."""
    return defs.resolve_job_def("branched")


def mapped_job() -> JobDefinition:
    """each (Map over xs: draft_x -> check (approval) -> publish_x) -> roundup."""
    return mapped_defs.resolve_job_def("mapped")
