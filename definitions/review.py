"""A reviewed digest: draft and critique in a loop until the critic says publish, title and tags in parallel,
then a branch on the verdict. Shows `Loop`, `Parallel` and `Branch` on the offline model."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_ai import Agent

from definitions.digest import Critique, Source, critic, sources, writer
from flujo_dagster import Branch, Loop, Parallel, Pipeline, agent_step, step


class ReviewedDigest(BaseModel):
    """The reviewed digest's context; `topic` is the run's input."""

    topic: str = Field(description="What the digest is about.")
    max_sources: int = 3
    sources: list[Source] = Field(default_factory=list)
    draft: str | None = Field(default=None, description="The latest draft.")
    critique: Critique | None = None
    title: str | None = None
    tags: list[str] = Field(default_factory=list)
    report: str | None = Field(default=None, description="The published report, or a note asking for work.")


titler = Agent(
    "openai:gpt-5-mini",
    defer_model_check=True,
    instructions="Write a short, plain title for the digest you are given.",
)

draft = agent_step(
    "draft",
    agent=writer,
    prompt="Write a digest about {topic}.\nSources:\n{sources}\nThe last review, if any:\n{critique}",
)
critique = agent_step(
    "critique", agent=critic, prompt="Review this digest about {topic}:\n{draft}\nSources:\n{sources}"
)
title = agent_step("title", agent=titler, prompt="Title this digest about {topic}:\n{draft}")


@step
def tags(sources: list[Source]) -> list[str]:
    """The tags the sources share, most common first."""
    counts: dict[str, int] = {}
    for source in sources:
        for tag in source.tags:
            counts[tag] = counts.get(tag, 0) + 1
    return sorted(counts, key=lambda t: (-counts[t], t))[:5]


@step(name="publish", output_keys=["report"])
def publish(title: str | None, draft: str | None, tags: list[str], sources: list[Source]) -> str:
    """The Markdown report of an approved digest."""
    lines = [f"# {(title or 'Digest').splitlines()[0]}", "", draft or "", "", f"Tags: {', '.join(tags)}", ""]
    lines += [f"- [{s.title}]({s.url})" for s in sources]
    return "\n".join(lines) + "\n"


@step(name="hold", output_keys=["report"])
def hold(critique: Critique | None) -> str:
    """A note saying why the digest is held back."""
    issues = "; ".join(critique.issues) if critique is not None else "no review"
    return f"Held back for more work: {issues}\n"


def verdict(critique: Critique | None) -> str:
    """The branch selector: the critic's verdict."""
    return critique.verdict if critique is not None else "revise"


def approved(critique: Critique | None) -> bool:
    """The loop's exit condition: the critic says publish."""
    return critique is not None and critique.verdict == "publish"


review = Pipeline(
    "reviewed_digest",
    context=ReviewedDigest,
    steps=[
        sources,
        Loop("refine", body=[draft, critique], until=approved, max_iterations=3, on_exhausted="continue"),
        Parallel("extras", branches={"title": [title], "tags": [tags]}),
        Branch("route", on=verdict, cases={"publish": [publish], "revise": [hold]}),
    ],
    assets=["sources", "draft", "report"],
    description="Draft and critique until approved, title and tag in parallel, then publish or hold.",
)
