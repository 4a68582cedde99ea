"""Pipelines for tests/test_postgres_instance.py, a reconstructable target (each step process imports this module):
`pg_notes`, two expanded agent steps under a budget and the shared call cache, on the multiprocess executor; and
`pg_stamped`, one function step scheduled every minute."""

from __future__ import annotations

from decimal import Decimal

from dagster import Definitions, JobDefinition, multiprocess_executor
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Budget, Pipeline, Price, Schedule, agent_step, build_definitions, step

SETTINGS = {"max_tokens": 1_000}
PRICE = Price(input_per_mtok=0, output_per_mtok=1_000)
"""$0.001 per output token: each answer (100 output tokens) costs $0.1, its worst case $1."""
AGENT = Agent("openai:gpt-5-mini", defer_model_check=True)


class Note(BaseModel):
    topic: str
    outline: str = ""
    draft: str = ""


class Stamp(BaseModel):
    topic: str
    stamp: str = ""


def _prompt(messages: list[ModelMessage]) -> str:
    return next(str(p.content) for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart))


def counting(requests: list[str]) -> AgentRuntime:
    """Answers `answer to <prompt>` with 40 input and 100 output tokens, appending each prompt to `requests`."""

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(_prompt(messages))
        usage = RequestUsage(input_tokens=40, output_tokens=100)
        return ModelResponse(parts=[TextPart(f"answer to {_prompt(messages)}")], usage=usage)

    return AgentRuntime(model=FunctionModel(answer, model_name="metered"), prices={"function:metered": PRICE})


notes = Pipeline(
    "pg_notes",
    context=Note,
    steps=[
        agent_step("outline", agent=AGENT, prompt="Outline {topic}", model_settings=SETTINGS),
        agent_step("draft", agent=AGENT, prompt="Draft from {outline}", model_settings=SETTINGS),
    ],
    budget=Budget(max_cost_usd=Decimal(10)),
)


@step
def stamp(topic: str) -> str:
    return f"stamped {topic}"


stamped = Pipeline(
    "pg_stamped", context=Stamp, steps=[stamp], schedule=Schedule(cron="* * * * *", inputs={"topic": "otters"})
)
STEP_PROCESS_REQUESTS: list[str] = []
"""The requests made in one step process (each has its own list: the tests count requests in the ledger)."""
defs: Definitions = build_definitions(
    pipelines=[notes, stamped],
    resources={"agent_runtime": counting(STEP_PROCESS_REQUESTS)},
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.postgres_defs"]}}}
    ),
)


def notes_job() -> JobDefinition:
    """`pg_notes` on the multiprocess executor."""
    return defs.resolve_job_def("pg_notes")
