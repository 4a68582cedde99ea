"""Agent steps on `openai:gpt-5-mini` with no API key anywhere, expanded into their own op and inline: the missing
key's one-line failure, in process and under the multiprocess executor (reconstructable targets for
`execute_job`; each step process imports this module again)."""

from __future__ import annotations

from datetime import timedelta

from dagster import EnvVar, JobDefinition, multiprocess_executor
from pydantic import BaseModel
from pydantic_ai import Agent

from flujo_dagster import AgentRuntime, Group, Pipeline, ProviderSettings, Retry, agent_step, build_definitions

MODEL = "openai:gpt-5-mini"
UNSET_ENV = "FLUJO_TEST_FAILURES_UNSET_KEY"
"""A variable no test sets: the multiprocess step processes cannot have inherited it."""


class Titled(BaseModel):
    topic: str = "agents"
    title: str = ""


def _title() -> object:
    retry = Retry(max_retries=2, delay=timedelta(0))  # never used: a missing key is not retried
    return agent_step("title", agent=Agent(MODEL, defer_model_check=True), prompt="A title for {topic}", retry=retry)


expanded = Pipeline("expanded", context=Titled, steps=[_title()])
inline = Pipeline("inlined", context=Titled, steps=[Group("g", steps=[_title()], inline=True)])
EXPANDED_PATH = "expanded > agent:title"

defs = build_definitions(pipelines=[expanded, inline])
multiprocess_defs = build_definitions(
    pipelines=[expanded],
    resources={"agent_runtime": AgentRuntime(providers={"openai": ProviderSettings(api_key=EnvVar(UNSET_ENV))})},
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.failures_defs"]}}}
    ),
)


def expanded_multiprocess_job() -> JobDefinition:
    """The expanded pipeline under the multiprocess executor, its key read from the unset `UNSET_ENV`."""
    return multiprocess_defs.resolve_job_def("expanded")
