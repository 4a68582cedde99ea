"""`AgentRuntime`: the Dagster resource that runs agent steps; the injection point for models."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import anyio
from dagster import EnvVar
from pydantic_ai import Agent, capture_run_messages
from pydantic_ai.exceptions import ModelAuthenticationError, ModelHTTPError
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.instrumented import InstrumentedModel
from pydantic_ai.models.test import TestModel

from flujo_dagster.adapter.storage.runtime_config import (
    OFFLINE_PROVIDERS,
    TEST_MODEL,
    ModelChoice,
    ProviderSettings,
    RuntimeSettings,
    canonical_model_id,
)
from flujo_dagster.dsl.steps import AgentStep, model_id_of
from flujo_dagster.errors import ConfigurationError, PricingNotConfiguredError
from flujo_dagster.pricing.prices import Price, PriceBook, TokenUsage
from flujo_dagster.runtime.agents import AgentCall, run_agent
from flujo_dagster.runtime.budget import BudgetContext, BudgetedModel
from flujo_dagster.runtime.cache import CachedModel, CacheUse
from flujo_dagster.runtime.call_records import CallLog
from flujo_dagster.runtime.records import Charge, Meter

__all__ = ["AgentRuntime", "ModelSource", "PricedAgents", "ProviderSettings"]

ModelSource = Literal["agent", "override", "offline"]
OFFLINE_MODELS = (FunctionModel, TestModel)
"""Model classes that never call a provider: reported with model source `offline`."""


class AgentRuntime(RuntimeSettings):
    """Runs agent steps; the resource `agent_runtime`, configurable in the Launchpad.

    `model` replaces every agent step's model; `step_models` replaces it per step name (and wins). A value is a
    `provider:model` string (Dagster config, which a run's config can override) or a pydantic-ai model object
    (kept outside the config: a run's config string for the same slot wins over it). pydantic-ai's
    `FunctionModel` and `TestModel` (and the string `test`) are reported with model source `offline`, anything
    else as `override`. Tests and the demo swap models here, never by patching. Without overrides each step runs
    on its agent's own model. `providers` (code only, never run config) configures how a model string's provider
    is built (API key, base URL).
    `prices` declares the price of models by `provider:model` (an offline model's is reported with price source
    `offline`; genai-prices knows none of them, and without a declared price they cost $0).
    `instrument=True` (code only) sends OpenTelemetry spans of every agent call through pydantic-ai's
    instrumentation, without message content; give pydantic-ai's `InstrumentationSettings` to choose
    (docs/calls.md#opentelemetry).
    """

    def offline_models(self) -> set[str]:
        """`provider:model` of the offline models configured here or priced here (their prices are reported as
        `offline`)."""
        configured = {canonical_model_id(model_id_of(m) or "") for m in self.configured_models() if _is_offline(m)}
        return configured | {m for m in self.prices if m.partition(":")[0] in OFFLINE_PROVIDERS}

    def model_id_for(self, step: AgentStep) -> str | None:
        """The `provider:model` `step` runs on here, or None when neither an override nor its agent names one."""
        chosen, source = self.model_for(step)
        model_id = model_id_of(chosen) if source != "agent" else step.model_id()
        return None if model_id is None else canonical_model_id(model_id)

    def model_for(self, step: AgentStep) -> tuple[ModelChoice | None, ModelSource]:
        """The model `step` runs on here, and where that choice came from."""
        chosen = self.choice_for(step.name)
        if chosen is None:
            return (step.model if isinstance(step.model, str | Model) else None), "agent"
        return chosen, ("offline" if _is_offline(chosen) else "override")

    async def run(
        self,
        step: AgentStep,
        prompt: str,
        *,
        prices: PriceBook,
        path: str,
        budget: BudgetContext | None = None,
        meter: Meter | None = None,
        deps: object = None,
        cache: CacheUse | None = None,
    ) -> tuple[AgentCall, ModelSource]:
        """Run `step`'s agent on `prompt` in the current event loop; the call is priced for the model that
        answered, and `PricingNotConfiguredError` (naming `path`) is raised when that model has no price.
        With a `budget`, every model request is reserved first and reconciled after (`BudgetedModel`).
        What was charged is added to `meter`: each budgeted request as the ledger recorded it, else the call.
        A model string is built here with the configured provider settings (`ConfigurationError` naming `path` when
        it cannot be); one this runtime's config chose (maybe in the Launchpad, so not validated at load) must have
        a price before its first request. `deps` are the run's pydantic-ai deps (the step's `deps=`).
        With a `cache`, each request is answered from it when an identical one was answered before (outside the
        budget: a hit reserves nothing); the call's `cache_hits` and `saved_cost_usd` say how many were, and what
        they saved."""
        agent = step.agent
        if not isinstance(agent, Agent):
            raise TypeError(f"agent step {step.name!r} holds {type(agent).__name__}, not a pydantic-ai Agent")
        model, source = self.model_for(step)
        chosen = model if model is not None else agent.model
        configured = None if chosen is None else model_id_of(chosen)
        if isinstance(chosen, str):
            configured = canonical_model_id(chosen)
            model = built = self.build_model(chosen, where=path)
            if source != "agent":
                prices.require(configured, where=path)
            chosen = built
        budgeted = budget is not None and bool(budget.guards)
        if budget is not None and budgeted:
            model = _budgeted(step, chosen, configured, budget, path, meter)
        cached = None
        if cache is not None and isinstance(chosen, Model):
            inner = model if isinstance(model, Model) else chosen
            model = cached = CachedModel(inner, cache=cache, path=path, saved=_saver(prices, path), meter=meter)
        if self.instrumentation is not None and isinstance(model, Model):
            model = InstrumentedModel(model, self.instrumentation)  # pydantic-ai unwraps it and adds its spans
        try:
            call = await run_agent(agent, prompt, model=model, model_settings=step.model_settings, deps=deps)
        except ModelAuthenticationError as exc:
            raise ConfigurationError(self._refused(path, configured, exc)) from None
        if cached is not None:  # pydantic-ai counts a hit as a request: it made none
            hits, saved, requests = cached.hits, cached.saved_usd, max(call.requests - cached.hits, 0)
            call = replace(call, requests=requests, cache_hits=hits, saved_cost_usd=saved, cache_consulted=True)
        try:
            priced = call.priced(prices.require(call.model, where=path))
        except PricingNotConfiguredError:
            if meter is not None and not budgeted:
                meter.add(_charge(call, None, f"no price for {call.model}"))
            raise
        if meter is not None and not budgeted:
            meter.add(_charge(priced, priced.cost_usd, priced.price_source))
        return priced, source

    def _refused(self, path: str, model: str | None, exc: ModelAuthenticationError) -> str:
        """The one line for a provider that refused the request's credentials (a wrong or revoked key)."""
        provider = (model or "").partition(":")[0]
        settings = self.providers.get(provider)
        status = f"HTTP {exc.status_code}" if isinstance(exc, ModelHTTPError) else type(exc).__name__
        key = (
            f'the variable {settings.api_key.env_var_name} that providers["{provider}"] api_key reads'
            if settings is not None and isinstance(settings.api_key, EnvVar)
            else f'its environment variable, or AgentRuntime(providers={{"{provider}": ProviderSettings(api_key=...)}})'
        )
        return f"{path}: model {model} was refused by its provider ({status}): check its API key ({key})"

    def price_book(self, overrides: Mapping[str, Price], *, strict: bool) -> PriceBook:
        """A price book with `overrides` and this runtime's declared prices (`offline` for offline models)."""
        offline = self.offline_models()
        declared = {m: p for m, p in self.prices.items() if m not in offline}
        return PriceBook(
            overrides={**overrides, **declared},
            offline={m: p for m, p in self.prices.items() if m in offline},
            strict=strict,
        )


def _saver(prices: PriceBook, path: str) -> Callable[[str, ModelResponse], Decimal | None]:
    """What a cached response would have cost, priced for `model`, the one that answered it (None without a
    price)."""

    def saved(model: str, response: ModelResponse) -> Decimal | None:
        usage = response.usage
        try:
            pricing = prices.require(model, where=path)
        except PricingNotConfiguredError:
            return None
        tokens = TokenUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        return pricing.cost(tokens)

    return saved


def _is_offline(model: object) -> bool:
    """Whether `model` never calls a provider: a `FunctionModel`, a `TestModel`, or the string `test`."""
    return isinstance(model, OFFLINE_MODELS) or model == TEST_MODEL


def _charge(call: AgentCall, cost: Decimal | None, source: str) -> Charge:
    """The charge of an unbudgeted call: its measured tokens (a lower bound when a response reported none)."""
    unknown = call.unmeasured_requests > 0
    return Charge(
        model=call.model,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cache_read_tokens=call.cache_read_tokens,
        requests=call.requests,
        cost_usd=cost,
        price_source=f"{source}; usage unknown, a lower bound" if unknown else source,
        usage_unknown=unknown,
    )


def _budgeted(
    step: AgentStep, chosen: object, configured: str | None, budget: BudgetContext, path: str, meter: Meter | None
) -> BudgetedModel:
    """`chosen` (named `configured`) wrapped so that every request is reserved against `budget` first and
    reconciled after."""
    max_tokens = step.max_tokens()
    if max_tokens is None or configured is None or not isinstance(chosen, Model | str):
        raise ConfigurationError(
            f"{path}: a budgeted agent step needs a model and max_tokens in its model settings "
            f"(model {configured!r}, max_tokens {max_tokens!r}); validate the pipeline first"
        )
    return BudgetedModel(
        infer_model(chosen), budget=budget, path=path, configured=configured, max_tokens=max_tokens, meter=meter
    )


class PricedAgents:
    """The interpreter's agent runner inside one op: the runtime with the run's price book, budgets and call
    cache (`cache_for`: the cache a step's requests use, None for none)."""

    def __init__(
        self,
        runtime: AgentRuntime,
        prices: PriceBook,
        budget_for: Callable[[AgentStep, str], BudgetContext | None] | None = None,
        pool_limits: Mapping[str, int] | None = None,
        calls: CallLog | None = None,
        cache_for: Callable[[AgentStep, str], CacheUse | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.prices = prices
        self.budget_for = budget_for
        self.calls = calls
        self.cache_for = cache_for
        limits = dict(pool_limits or {})
        closed = sorted(pool for pool, limit in limits.items() if limit < 1)
        if closed:
            raise ConfigurationError(
                f"concurrency pool(s) {closed} have a limit below 1, so their agent calls would wait forever; set a "
                "limit of 1 or more (dagster instance concurrency set POOL N)"
            )
        self.limiters = {pool: anyio.CapacityLimiter(limit) for pool, limit in limits.items()}

    async def run(
        self, step: AgentStep, prompt: str, *, path: str, meter: Meter | None = None, deps: object = None
    ) -> tuple[AgentCall, ModelSource]:
        """Run and price one agent step (see `AgentRuntime.run`), at most as many at once per pool as the
        Dagster instance's limit for the step's pool allows; recorded in `calls` when given."""
        budget = self.budget_for(step, path) if self.budget_for is not None else None
        cache = self.cache_for(step, path) if self.cache_for is not None else None
        limiter = self.limiters.get(step.pool_name() or "")
        if limiter is None:
            return await self._recorded(step, prompt, path, budget, meter, deps, cache)
        async with limiter:
            return await self._recorded(step, prompt, path, budget, meter, deps, cache)

    async def _recorded(
        self,
        step: AgentStep,
        prompt: str,
        path: str,
        budget: BudgetContext | None,
        meter: Meter | None,
        deps: object,
        cache: CacheUse | None,
    ) -> tuple[AgentCall, ModelSource]:
        """The call, and its record in `calls` whether it is answered or fails."""
        if self.calls is None:
            return await self.runtime.run(
                step, prompt, prices=self.prices, path=path, budget=budget, meter=meter, deps=deps, cache=cache
            )
        meter = meter if meter is not None else Meter()
        now = datetime.now(UTC)
        scopes = [g.scope_at(now) for g in budget.guards] if budget is not None and budget.guards else None
        watch = self.calls.begin(path, meter=meter, scopes=scopes, configured=self.runtime.model_id_for(step))
        with capture_run_messages() as captured:
            try:
                call, source = await self.runtime.run(
                    step, prompt, prices=self.prices, path=path, budget=budget, meter=meter, deps=deps, cache=cache
                )
            except BaseException as exc:
                watch.failed(exc, captured)
                raise
        watch.finished(call, source, captured)
        return call, source
