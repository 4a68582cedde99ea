"""A research digest: gather sources, draft with an agent, critique with an agent, write a report."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_ai import Agent

from flujo_dagster import Pipeline, Retry, Schedule, agent_step, step

DATA = Path(__file__).parent / "data" / "sources.json"


class Source(BaseModel):
    id: str
    title: str
    url: str
    tags: list[str]
    summary: str
    published: date


class Critique(BaseModel):
    score: int = Field(ge=0, le=10)
    issues: list[str]
    verdict: Literal["publish", "revise"]


class Digest(BaseModel):
    """The digest's context: each field is a key; `topic` is the run's input."""

    topic: str = Field(description="What the digest is about, e.g. 'agents'.")
    max_sources: int = 3
    sources: list[Source] = Field(default_factory=list, description="Sources ranked for the topic.")
    draft: str | None = Field(default=None, description="The writer agent's draft.")
    critique: Critique | None = None
    report: str | None = Field(default=None, description="The final Markdown report.")


writer = Agent(
    "openai:gpt-5-mini",
    defer_model_check=True,
    instructions="You write short, factual research digests from the sources given. Cite every source title.",
)
critic = Agent(
    "openai:gpt-5-mini",
    output_type=Critique,
    defer_model_check=True,
    instructions="You review a digest draft: score it 0-10, list concrete issues, and say publish or revise.",
)


@step
def sources(topic: str, max_sources: int) -> list[Source]:
    """Rank the shipped sources by how many of their tags or words match the topic."""
    words = {w.lower() for w in topic.split()}
    items = [Source.model_validate(s) for s in json.loads(DATA.read_text())]

    def score(s: Source) -> int:
        text = {t.lower() for t in s.tags} | {w.lower().strip(".,") for w in s.title.split()}
        return len(words & text)

    ranked = sorted((s for s in items if score(s) > 0), key=lambda s: (-score(s), -s.published.toordinal()))
    return ranked[:max_sources]


draft = agent_step(
    "draft",
    agent=writer,
    prompt="Write a digest about {topic}.\nSources:\n{sources}",
    retry=Retry(max_retries=2, delay=timedelta(seconds=0.5)),
)

critique = agent_step(
    "critique",
    agent=critic,
    prompt="Review this digest about {topic}:\n{draft}\nIt cites these sources:\n{sources}",
)


@step
def report(topic: str, sources: list[Source], draft: str | None, critique: Critique | None) -> str:
    """Render the Markdown report: the draft, the critique, and the sources."""
    lines = [f"# Digest: {topic}", "", draft or "(no draft)", ""]
    if critique is not None:
        lines += [f"**Review:** {critique.verdict} ({critique.score}/10)"]
        lines += [f"- {issue}" for issue in critique.issues]
        lines.append("")
    lines.append("## Sources")
    lines += [f"- [{s.title}]({s.url}) ({s.published.isoformat()})" for s in sources]
    return "\n".join(lines) + "\n"


digest = Pipeline(
    "digest",
    context=Digest,
    steps=sources >> draft >> critique >> report,
    assets=["sources", "draft", "report"],
    description="Research digest: rank sources, draft and critique with agents, write a Markdown report.",
    # every Monday at 07:00 UTC; stopped until switched on in the UI (Automation), like any Dagster schedule
    schedule=Schedule(cron="0 7 * * 1", inputs={"topic": "agents"}),
)
