"""The retry-policy cases: one leaf step each, with `Retry(max_retries=2)`, that succeeds, fails some attempts,
or fails in a way that is never retried. Each attempt appends a line to the file named by the run input
`tally`, so attempts are counted in every executor (the multiprocess one runs each step in its own process).

`pipeline(case, inline=...)` puts the step in group `g`, expanded (the step is its own op) or inline (the group
is one op, run by the interpreter); the step path, and so every message naming it, is the same in both forms.
`defs` holds the function-step cases in both forms under the multiprocess executor (a reconstructable target
for `execute_job`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from dagster import Failure, JobDefinition, multiprocess_executor
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from flujo_dagster import AgentRuntime, Budget, Pipeline, Price, Retry, agent_step, build_definitions, step
from flujo_dagster.dsl import Group, Step
from flujo_dagster.errors import ConfigurationError

RETRY = Retry(max_retries=2, delay=timedelta(seconds=0.0), backoff="constant")


class Trial(BaseModel):
    """`tally` is the file each attempt appends to; a function step writes `out` from `n`, an agent `text`."""

    tally: str
    n: int = 1
    out: int = 0
    text: str = ""


def attempt(tally: str) -> int:
    """Count this attempt in the tally file; its number (1-based)."""
    with Path(tally).open("a") as file:
        file.write("attempt\n")
    return len(Path(tally).read_text().splitlines())


def attempts(tally: str | Path) -> int:
    """How many attempts the tally file counted."""
    path = Path(tally)
    return len(path.read_text().splitlines()) if path.exists() else 0


@step(name="ok", output_keys=["out"], retry=RETRY)
def ok(tally: str, n: int) -> int:
    attempt(tally)
    return n + 1


@step(name="flaky", output_keys=["out"], retry=RETRY)
def flaky(tally: str, n: int) -> int:
    if attempt(tally) < 2:
        raise RuntimeError("flaky")
    return n + 1


@step(name="slow_once", output_keys=["out"], retry=RETRY, timeout=timedelta(seconds=0.3))
async def slow_once(tally: str, n: int) -> int:
    if attempt(tally) < 2:
        await anyio.sleep(10)
    return n + 1


@step(name="always", output_keys=["out"], retry=RETRY)
def always(tally: str, n: int) -> int:
    attempt(tally)
    raise ValueError(f"boom {n}")


@step(name="wrong_type", output_keys=["out"], retry=RETRY)
def wrong_type(tally: str, n: int) -> Any:
    attempt(tally)
    return "not an int"


@step(name="final", output_keys=["out"], retry=RETRY)
def final(tally: str, n: int) -> int:
    attempt(tally)
    raise Failure(description=f"nope {n}", allow_retries=False)


@step(name="misconfigured", output_keys=["out"], retry=RETRY)
def misconfigured(tally: str, n: int) -> int:
    attempt(tally)
    raise ConfigurationError("the step's configuration is wrong")


def counted_prompt(tally: str, n: int) -> str:
    """An agent step's prompt: rendered once per attempt, so it counts them."""
    number = attempt(tally)
    return f"attempt {number}: {n}"


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("seven")], usage=RequestUsage(input_tokens=10, output_tokens=5))


def _flaky_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if "attempt 1:" in str(messages):
        raise RuntimeError("the model is flaky")
    return _answer(messages, info)


def _unpriced_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("seven")], provider_name="nowhere", usage=RequestUsage(output_tokens=5))


_agent = Agent("openai:gpt-5-mini", defer_model_check=True)
PRICE = Price(input_per_mtok=1_000, output_per_mtok=1_000)  # $0.001 a token


def _agent_step(name: str, **options: Any) -> Step:
    return agent_step(name, agent=_agent, prompt=counted_prompt, output_key="text", retry=RETRY, **options)


def agent_runtime() -> AgentRuntime:
    """Scripted models: `agent_flaky`'s fails its first request; `unpriced`'s answers as a provider with no
    price."""
    return AgentRuntime(
        model=FunctionModel(_answer, model_name="scripted"),
        step_models={
            "agent_flaky": FunctionModel(_flaky_answer, model_name="scripted"),
            "unpriced": FunctionModel(_unpriced_answer, model_name="gpt-4o"),
        },
        prices={"function:scripted": PRICE, "function:gpt-4o": PRICE},
    )


@dataclass(frozen=True)
class Case:
    """A step, how many attempts it makes, and its outcome: the final context's values, or the original
    error's class and a part of its message."""

    step: Step
    attempts: int
    values: dict[str, object] | None = None
    error: tuple[str, str] | None = None


CASES: dict[str, Case] = {
    "ok": Case(ok, 1, values={"out": 2}),
    "flaky": Case(flaky, 2, values={"out": 2}),
    "slow_once": Case(slow_once, 2, values={"out": 2}),
    "always": Case(always, 3, error=("ValueError", "boom 1")),
    "wrong_type": Case(wrong_type, 1, error=("StepOutputError", "returned a value for key 'out' that is not a int")),
    "final": Case(final, 1, error=("Failure", "nope 1")),
    "misconfigured": Case(misconfigured, 1, error=("ConfigurationError", "the step's configuration is wrong")),
    "agent_flaky": Case(_agent_step("agent_flaky"), 2, values={"text": "seven"}),
    # max_tokens=5 fits the budget (validation passes), but the request's own bytes, counted as input tokens
    # at $0.001 each, never do: refused before the request
    "over_budget": Case(
        _agent_step("over_budget", model_settings={"max_tokens": 5}, budget=Budget(max_cost_usd=Decimal("0.01"))),
        1,
        error=("UsageLimitExceededError", "over_budget"),
    ),
    "unpriced": Case(_agent_step("unpriced"), 1, error=("PricingNotConfiguredError", "has no price")),
}


def pipeline(case: str, *, inline: bool, name: str | None = None) -> Pipeline:
    """The case's step in group `g`, expanded or inline."""
    return Pipeline(name or case, context=Trial, steps=[Group("g", steps=[CASES[case].step], inline=inline)])


MULTIPROCESS = ("flaky", "always")

defs = build_definitions(
    pipelines=[
        pipeline(c, inline=i, name=f"{c}_{'inline' if i else 'expanded'}") for c in MULTIPROCESS for i in (0, 1)
    ],
    executor=multiprocess_executor.configured(
        {"start_method": {"forkserver": {"preload_modules": ["tests.retry_defs"]}}}
    ),
)


def flaky_expanded_job() -> JobDefinition:
    return defs.resolve_job_def("flaky_expanded")


def flaky_inline_job() -> JobDefinition:
    return defs.resolve_job_def("flaky_inline")


def always_expanded_job() -> JobDefinition:
    return defs.resolve_job_def("always_expanded")


def always_inline_job() -> JobDefinition:
    return defs.resolve_job_def("always_inline")


always_expanded = pipeline("always", inline=False)
"""For the CLI: a step that always fails, its own op."""
