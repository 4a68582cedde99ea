"""A signed-off digest: an approval gate inside a loop. Each round drafts, waits for a reviewer to sign the draft
off (they may edit it), then has the critic review the signed-off draft; the loop ends when the critic says
publish (at most two rounds), then the report is written. Shows `Approval` in a `Loop` on the offline model."""

from __future__ import annotations

from pydantic import BaseModel, Field

from definitions.digest import Critique, Source, critic, report, sources, writer
from flujo_dagster import Approval, Loop, Pipeline, agent_step


class GatedDigest(BaseModel):
    """The signed-off digest's context; `topic` is the run's input."""

    topic: str = Field(description="What the digest is about.")
    max_sources: int = 3
    sources: list[Source] = Field(default_factory=list)
    draft: str | None = Field(default=None, description="The latest draft, as the reviewer signed it off.")
    critique: Critique | None = None
    report: str | None = Field(default=None, description="The final Markdown report.")


class DraftEdit(BaseModel):
    """What the reviewer may change when signing a draft off: the draft itself."""

    draft: str


draft = agent_step(
    "draft",
    agent=writer,
    prompt="Write a digest about {topic}.\nSources:\n{sources}\nThe last review, if any:\n{critique}",
)
critique = agent_step(
    "critique", agent=critic, prompt="Review this digest about {topic}:\n{draft}\nIt cites these sources:\n{sources}"
)


def publishable(critique: Critique | None) -> bool:
    """The loop's exit condition: the critic says publish."""
    return critique is not None and critique.verdict == "publish"


gated = Pipeline(
    "gated_digest",
    context=GatedDigest,
    steps=[
        sources,
        Loop(
            "revise",
            body=[draft, Approval("sign_off", show=["draft"], decision=DraftEdit), critique],
            until=publishable,
            max_iterations=2,
            on_exhausted="continue",
        ),
        report,
    ],
    assets=["sources", "report"],
    description="Draft, have a reviewer sign the draft off (and edit it), critique; repeat until the critic says "
    "publish, then write the report.",
)
