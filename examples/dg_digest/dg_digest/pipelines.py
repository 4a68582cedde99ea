"""The digest pipeline: pick sources for a topic, draft a digest with an agent, format a report."""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_ai import Agent

from flujo_dagster import Pipeline, agent_step, step

LIBRARY = {
    "agents": ["Typed agent pipelines", "Agents in production"],
    "dagster": ["Assets and lineage", "Schedules for LLM jobs"],
    "pricing": ["Budgets that cannot be overspent"],
}


class Digest(BaseModel):
    """The context: `topic` is the run's input; the other keys are written by the steps."""

    topic: str = Field(description="What the digest is about.")
    sources: list[str] = Field(default_factory=list, description="Source titles for the topic.")
    draft: str | None = Field(default=None, description="The writer agent's draft.")
    report: str | None = Field(default=None, description="The final Markdown report.")


@step
def sources(topic: str) -> list[str]:
    """Titles whose library entry shares a word with the topic."""
    words = {w.lower() for w in topic.split()}
    return [title for tag, titles in LIBRARY.items() if tag in words for title in titles]


@step
def report(topic: str, draft: str | None) -> str:
    """The draft under a heading."""
    return f"# {topic.title()} digest\n\n{draft}"


writer = Agent("openai:gpt-5-mini", defer_model_check=True, instructions="Write a short digest of the sources.")

digest = Pipeline(
    "dg_digest",
    context=Digest,
    steps=[
        sources,
        agent_step(
            "draft",
            agent=writer,
            prompt="Summarise {sources} about {topic}.",
            model_settings={"max_tokens": 400},
        ),
        report,
    ],
    assets=["sources", "draft", "report"],
)
