"""A code location in three versions for tests/test_staleness.py: `before`, then the same pipeline with the draft
step's prompt changed (`prompt_changed`), or with the title step moved to another model in this location's agent
runtime (`model_changed`). The webserver's GraphQL (from a code server) shows which assets each change made stale."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

from flujo_dagster import AgentRuntime, Pipeline, Price, agent_step, build_definitions, names, step

FREE = Price(input_per_mtok=0, output_per_mtok=0)


class Story(BaseModel):
    topic: str
    outline: str = ""
    draft: str = ""
    words: int = 0
    title: str = ""


@step
def outline(topic: str) -> str:
    return f"outline of {topic}"


@step
def words(draft: str) -> int:
    return len(draft.split())


writer = Agent("openai:gpt-5-mini", defer_model_check=True)
titler = Agent("openai:gpt-5-mini", defer_model_check=True)


def story(draft_prompt: str) -> Pipeline:
    """outline -> draft (agent) -> words, and a title (agent) from the topic alone."""
    return Pipeline(
        "story",
        context=Story,
        steps=[
            outline,
            agent_step("draft", agent=writer, prompt=draft_prompt),
            words,
            agent_step("title", agent=titler, prompt="A title for {topic}"),
        ],
        assets=["outline", "draft", "words", "title"],
    )


def runtime(**step_models: str) -> AgentRuntime:
    return AgentRuntime(
        model=TestModel(custom_output_text="three short words"),
        step_models=step_models,
        prices={"test:test": FREE, "openai:gpt-5-mini": FREE, "openai:gpt-5-nano": FREE},
    )


before = build_definitions(pipelines=[story("Write about {outline}")], resources={names.AGENT_RUNTIME_KEY: runtime()})
prompt_changed = build_definitions(
    pipelines=[story("Write briefly about {outline}")], resources={names.AGENT_RUNTIME_KEY: runtime()}
)
model_changed = build_definitions(
    pipelines=[story("Write about {outline}")],
    resources={names.AGENT_RUNTIME_KEY: runtime(title="openai:gpt-5-nano")},
)
