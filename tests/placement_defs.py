"""Generated pipelines with one approval gate placed under up to three containers, one per placement, as
reconstructable jobs (`build_reconstructable_job(__name__, "placement_job", (placement_id,))`).

A placement is a tuple of container kinds, outermost first; its id joins them and `approval` with `/`
(`loop/branch-inline/approval`). The innermost body is `write` (an agent step writing `draft`), the gate
`review` (shows `draft`) and `publish`. Loops exit after their first iteration (a second one is compiled and
skipped), branches take the arm holding the gate, parallels hold a second, gate-free branch writing `side<d>`,
maps run over the two elements of `xs` and collect `out<d>`. Every agent request is appended to the file named
by FLUJO_TEST_REQUEST_LOG."""

from __future__ import annotations

import os
import re
from decimal import Decimal
from functools import cache
from pathlib import Path

from dagster import JobDefinition
from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import (
    AgentRuntime,
    Approval,
    ApprovalSettings,
    Branch,
    Group,
    Loop,
    Map,
    Parallel,
    Pipeline,
    Price,
    agent_step,
    build_definitions,
    step,
)
from flujo_dagster.dsl.steps import Step

UNKNOWN_OK = ApprovalSettings(allow_unknown_requester=True)
"""Dagster OSS sets no dagster/user: these runs have no known requester."""

REQUEST_LOG = "FLUJO_TEST_REQUEST_LOG"
KINDS = (
    "loop",
    "loop-inline",
    "branch",
    "branch-inline",
    "parallel-expanded",
    "parallel",
    "map-expanded",
    "map",
    "group",
    "group-inline",
)
"""Container kinds, by their `inline`: Loop, Branch and Group default to expanded (`-inline` is `inline=True`), Parallel
and Map to one op (`-expanded` is `inline=False`)."""
GATE = "review"


class Doc(BaseModel):
    """Every key a placement's pipeline may use: `topic` is the run's input."""

    topic: str
    go: bool = True
    xs: list[str] = Field(default_factory=lambda: ["a", "b"])
    x: str = "all"
    draft: str = ""
    published: str = ""
    side1: str = ""
    side2: str = ""
    side3: str = ""
    out1: list[str] = Field(default_factory=list)
    out2: list[str] = Field(default_factory=list)
    out3: list[str] = Field(default_factory=list)


def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompt = next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))
    with Path(os.environ[REQUEST_LOG]).open("a") as log:
        log.write(prompt + "\n")
    return ModelResponse(parts=[TextPart(f"draft: {prompt}")])


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
# cache=False: the tests count the requests of every run
write = agent_step("write", agent=writer, prompt="Write about {topic} ({x})", output_key="draft", cache=False)


@step(name="publish", output_keys=["published"])
def publish(draft: str) -> str:
    return f"published: {draft}"


runtime = AgentRuntime(
    model=FunctionModel(answer, model_name="scripted"),
    prices={"function:scripted": Price(input_per_mtok=Decimal(0), output_per_mtok=Decimal(0))},
)


def placement_id(kinds: tuple[str, ...]) -> str:
    """`loop/branch-inline/approval` for ("loop", "branch-inline")."""
    return "/".join((*kinds, "approval"))


def kinds_of(pid: str) -> tuple[str, ...]:
    """The container kinds of placement id `pid`, outermost first."""
    return tuple(pid.split("/")[:-1])


def pipeline_name(pid: str) -> str:
    return "p_" + re.sub(r"[^A-Za-z0-9]", "_", pid)


def container_name(kind: str, depth: int) -> str:
    """`l1`, `b2`, `p3`, `m1`, `g2`: the kind's initial and the depth (1 is outermost)."""
    return f"{kind[0]}{depth}"


def _fallback(depth: int, out: str) -> Step:
    value: str | list[str] = "fallback" if out == "published" else ["fallback"]
    return step(name=f"fallback{depth}", output_keys=[out])(lambda: value)


def _side(depth: int) -> Step:
    return step(name=f"side{depth}", output_keys=[f"side{depth}"])(lambda topic: f"side of {topic}")


def _wrap(kind: str, depth: int, inner: list[Step], out: str) -> tuple[list[Step], str]:
    """`inner` (writing `out` on every path) inside a container of `kind` at `depth`; and the key the
    container writes on every path."""
    name = container_name(kind, depth)
    base = kind.removesuffix("-inline").removesuffix("-expanded")
    inline = kind.endswith("-inline") or (base in ("parallel", "map") and not kind.endswith("-expanded"))
    if base == "loop":
        return [Loop(name, body=inner, until=lambda go: go, max_iterations=2, inline=inline)], out
    if base == "branch":
        return [Branch(name, on="go", cases={True: inner}, default=[_fallback(depth, out)], inline=inline)], out
    if base == "parallel":
        return [Parallel(name, branches={"a": inner, "b": [_side(depth)]}, inline=inline)], out
    if base == "map":
        into = f"out{depth}"
        node = Map(name, over="xs", item="x", body=inner, result=out, into=into, inline=inline)
        return [node], into
    assert base == "group", kind
    return [Group(name, steps=inner, inline=inline)], out


def placement_pipeline(pid: str) -> Pipeline:
    """The pipeline of placement `pid`."""
    steps: list[Step] = [write, Approval(GATE, show=["draft"]), publish]
    out = "published"
    kinds = kinds_of(pid)
    for depth in range(len(kinds), 0, -1):
        steps, out = _wrap(kinds[depth - 1], depth, steps, out)
    return Pipeline(pipeline_name(pid), context=Doc, steps=steps)


@cache
def placement_job(pid: str) -> JobDefinition:
    """The job of placement `pid` (built once per process: every resume reconstructs it)."""
    pipeline = placement_pipeline(pid)
    resources = {"agent_runtime": runtime, "approval_settings": UNKNOWN_OK}
    defs = build_definitions(pipelines=[pipeline], resources=resources)
    return defs.resolve_job_def(pipeline.name)
