"""Running a pydantic-ai agent for one step and collecting what it used."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model
from pydantic_ai.settings import ModelSettings

from flujo_dagster.dsl.steps import model_id_of
from flujo_dagster.pricing.prices import ModelPricing, TokenUsage

__all__ = ["AgentCall", "run_agent"]


@dataclass(frozen=True, kw_only=True)
class AgentCall:
    """The result of one agent step: its output, usage, and the model that actually answered."""

    output: object
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    requests: int
    cache_write_tokens: int = 0
    cost_usd: Decimal | None = None
    """The cost of the call's requests, priced for the model that answered (None until priced)."""
    price_source: str = ""
    """Where the price came from: `genai-prices <version>`, `override` or `offline`."""
    unmeasured_requests: int = 0
    """Responses that reported no usage (their tokens are unknown, so the call's are a lower bound)."""
    messages: tuple[ModelMessage, ...] = ()
    """Every message of the run (instructions, prompts, tool calls and returns, responses), for its call record."""
    latency_s: float | None = None
    """How long the agent's run took, in seconds (None when not measured)."""
    cache_hits: int = 0
    """Model requests served from the shared call cache: no request was made and they cost $0."""
    saved_cost_usd: Decimal = Decimal(0)
    """What the cache hits would have cost, priced for the model that answered them."""
    cache_consulted: bool = False
    """Whether the call's requests went through the call cache (False: `cache=False`, or no cache)."""

    def usage(self) -> TokenUsage:
        """The call's tokens, for pricing."""
        return TokenUsage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )

    def priced(self, pricing: ModelPricing) -> AgentCall:
        """This call with its cost from `pricing`."""
        return replace(self, cost_usd=pricing.cost(self.usage()), price_source=pricing.source)


async def run_agent(
    agent: Agent[Any, Any],
    prompt: str,
    *,
    model: Model | str | None,
    model_settings: Mapping[str, object] | None,
    deps: object = None,
) -> AgentCall:
    """Run `agent` on `prompt` (with `model` replacing the agent's own when given, and `deps` as the run's
    pydantic-ai deps, which its tools get as `ctx.deps`) in the caller's loop. The usage is the whole run's, as
    pydantic-ai reports it: every model request, those that called tools included.

    A model object is entered for the call, so the HTTP client its provider opened (and its pooled
    connections) is closed before the call returns, on the loop that opened it. Dagster closes its loop
    after each run; a client left open would be bound to a closed loop (a `ResourceWarning` for each
    unclosed connection when collected). The next call on another loop gets a new client. A model given
    by name is built for the run and closed by pydantic-ai itself.
    """
    settings: ModelSettings | None = ModelSettings(**model_settings) if model_settings else None  # type: ignore[typeddict-item]
    chosen = model if model is not None else agent.model
    async with AsyncExitStack() as stack:
        if isinstance(chosen, Model):
            await stack.enter_async_context(chosen)
        started = time.perf_counter()
        result = await agent.run(prompt, model=model, model_settings=settings, deps=deps)
        latency = time.perf_counter() - started
    usage = result.usage
    messages = tuple(result.all_messages())
    answered = _answering_model(messages, model if model is not None else agent.model)
    return AgentCall(
        output=result.output,
        model=answered,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        requests=usage.requests,
        unmeasured_requests=usage.unmeasured_requests,
        messages=messages,
        latency_s=latency,
    )


def _answering_model(messages: Sequence[ModelMessage], fallback: object) -> str:
    """`provider:model` of the last response's model (what really answered), else the configured one."""
    for message in reversed(messages):
        if isinstance(message, ModelResponse) and message.model_name:
            system = message.provider_name or (model_id_of(fallback) or "unknown:").split(":", 1)[0]
            return f"{system}:{message.model_name}"
    return model_id_of(fallback) or "unknown"
