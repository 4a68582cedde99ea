"""Strict pricing: a model without a price stops the definitions from loading (PRICE-001) and fails a run on the
first attempt; every agent call's cost is genai-prices' figure for the usage of the model that answered."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance
from genai_prices import Usage, calc_price
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from definitions.digest import digest
from definitions.offline import offline_runtime
from flujo_dagster import (
    AgentRuntime,
    ConfigurationError,
    Pipeline,
    Price,
    PriceBook,
    PricingNotConfiguredError,
    Retry,
    agent_step,
    build_definitions,
    run_pipeline,
)
from flujo_dagster.names import PRICE_BOOK_KEY
from flujo_dagster.pricing.prices import GENAI_PRICES_SOURCE, TokenUsage

FREE = Price(input_per_mtok=0, output_per_mtok=0)


class Question(BaseModel):
    topic: str
    answer: str = ""


def ask(model: str, **options: object) -> Pipeline:
    agent = Agent(model, defer_model_check=True)
    return Pipeline(
        "ask", context=Question, steps=[agent_step("answer", agent=agent, prompt="About {topic}", **options)]
    )


def override_hint(model: str) -> str:
    return (
        f'Add an override, e.g. in pyproject.toml [tool.flujo_dagster.pricing] "{model}" = {{ input_per_mtok = ..., '
        f'output_per_mtok = ... }} or build_definitions(prices={{"{model}": Price(input_per_mtok=..., '
        "output_per_mtok=...)})"
    )


# --- definition time ---------------------------------------------------------------------------------------------


def test_an_unknown_model_stops_the_definitions_with_price_001() -> None:
    with pytest.raises(PricingNotConfiguredError) as raised:
        build_definitions(pipelines=[ask("ollama:llama3")])
    assert isinstance(raised.value, ConfigurationError)
    assert str(raised.value) == (
        "flujo_dagster found 1 error(s) in the pipeline definitions:\n"
        "  [PRICE-001] error at ask > agent:answer: model 'ollama:llama3' at ask > agent:answer has no price: "
        f"{GENAI_PRICES_SOURCE} does not know it (Unable to find provider provider_id='ollama'). "
        f"{override_hint('ollama:llama3')}. "
        "Hint: add an override for the model (offline models, FunctionModel and TestModel, cost $0 without one)"
    )


def test_a_near_miss_model_name_is_refused_not_priced_as_its_neighbour() -> None:
    assert PriceBook(strict=False).resolve("anthropic:claude-sonnet-4-5-bogus") is not None  # genai-prices would
    with pytest.raises(PricingNotConfiguredError) as raised:
        build_definitions(pipelines=[ask("anthropic:claude-sonnet-4-5-bogus")])
    assert (
        f"{GENAI_PRICES_SOURCE} matches it only loosely, as anthropic:claude-sonnet-4-5; strict pricing accepts "
        "only the exact model id." in str(raised.value)
    )


def test_an_exact_genai_prices_model_builds() -> None:
    defs = build_definitions(pipelines=[ask("anthropic:claude-sonnet-4-5")])
    assert defs.resolve_job_def("ask") is not None


def test_overrides_from_the_builder_and_from_pyproject_are_accepted(tmp_path: Path) -> None:
    build_definitions(pipelines=[ask("ollama:llama3")], prices={"ollama:llama3": FREE})
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[tool.flujo_dagster.pricing]\n"ollama:llama3" = { input_per_mtok = 0, output_per_mtok = 0 }\n'
    )
    build_definitions(pipelines=[ask("ollama:llama3")], pyproject=pyproject)
    pyproject.write_text('[tool.flujo_dagster.pricing]\n"ollama:llama3" = { input_per_mtok = 0 }\n')
    with pytest.raises(ConfigurationError) as raised:
        build_definitions(pipelines=[ask("ollama:llama3")], pyproject=pyproject)
    assert str(raised.value) == (
        f"{pyproject} [tool.flujo_dagster.pricing]: pricing for 'ollama:llama3' needs input_per_mtok and "
        "output_per_mtok (and may have cached_input_per_mtok); missing ['output_per_mtok'], unknown []"
    )


def test_non_strict_pricing_is_explicit_and_reported_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    build_definitions(pipelines=[ask("anthropic:claude-sonnet-4-5-bogus")], strict_pricing=False)
    assert "[PRICE-002] warning at ask: pricing is not strict" in caplog.text


def test_an_offline_model_needs_no_declared_price_and_a_declared_one_wins() -> None:
    offline = FunctionModel(lambda m, i: ModelResponse(parts=[TextPart("ok")]), model_name="scripted")
    defs = build_definitions(
        pipelines=[ask("openai:gpt-5-mini")], resources={"agent_runtime": AgentRuntime(model=offline)}
    )
    book = defs.resources[PRICE_BOOK_KEY]
    assert isinstance(book, PriceBook)
    pricing = book.require("function:scripted", where="ask > agent:answer")
    assert (pricing.source, pricing.cost(TokenUsage(input_tokens=10**6, output_tokens=10**6))) == ("offline", 0)
    declared = Price(input_per_mtok="1", output_per_mtok="2")
    runtime = AgentRuntime(model=offline, prices={"function:scripted": declared})
    book = build_definitions(pipelines=[ask("openai:gpt-5-mini")], resources={"agent_runtime": runtime}).resources[
        PRICE_BOOK_KEY
    ]
    assert isinstance(book, PriceBook)
    pricing = book.require("function:scripted", where="ask > agent:answer")
    assert (pricing.source, pricing.cost(TokenUsage(output_tokens=10**6))) == ("offline", Decimal(2))


# --- run time ----------------------------------------------------------------------------------------------------


def answering_as(provider: str, usage: RequestUsage) -> FunctionModel:
    """A model configured as `function:<name>` whose responses say `provider` answered, with `usage`."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("an answer")], provider_name=provider, usage=usage)

    return FunctionModel(answer, model_name="gpt-4o")


def test_cost_metadata_is_genai_prices_figure_for_the_answering_models_usage(instance: DagsterInstance) -> None:
    usage = RequestUsage(input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000)
    runtime = AgentRuntime(model=answering_as("openai", usage), prices={"function:gpt-4o": FREE})
    result = run_pipeline(
        ask("openai:gpt-5-mini"), {"topic": "t"}, instance=instance, resources={"agent_runtime": runtime}
    )
    assert result.success, result.error
    expected = calc_price(
        Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000), "gpt-4o", provider_id="openai"
    ).total_price
    assert expected > 0
    outputs = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_OUTPUT)
    (output,) = [e for e in outputs if e.step_key == "answer"]
    metadata = {k: v.value for k, v in output.dagster_event.event_specific_data.metadata.items()}  # type: ignore[union-attr]
    assert metadata["flujo/model"] == "openai:gpt-4o"
    assert metadata["flujo/price_source"] == GENAI_PRICES_SOURCE
    assert metadata["flujo/cost_usd"] == pytest.approx(float(expected), rel=1e-12)
    assert (metadata["flujo/input_tokens"], metadata["flujo/output_tokens"]) == (12_345, 678)


def test_offline_prices_are_reported_as_offline() -> None:
    price = Price(input_per_mtok="0.25", output_per_mtok="2", cached_input_per_mtok="0.025")
    pricing = PriceBook(offline={"function:x": price}).resolve("function:x")
    assert pricing is not None and pricing.source == "offline"
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=500_000, cache_read_tokens=200_000)
    assert pricing.cost(usage) == Decimal("0.25") * Decimal("0.8") + Decimal("0.025") * Decimal("0.2") + Decimal("1")


def test_an_unpriced_answering_model_fails_the_step_on_its_first_attempt(instance: DagsterInstance) -> None:
    usage = RequestUsage(input_tokens=10, output_tokens=5)
    runtime = AgentRuntime(model=answering_as("nowhere", usage), prices={"function:gpt-4o": FREE})
    pipeline = ask("openai:gpt-5-mini", retry=Retry(max_retries=3, delay=timedelta(seconds=0.0)))
    result = run_pipeline(pipeline, {"topic": "t"}, instance=instance, resources={"agent_runtime": runtime})
    assert not result.success
    message = (
        "model 'nowhere:gpt-4o' at ask > agent:answer has no price: "
        f"{GENAI_PRICES_SOURCE} does not know it (Unable to find provider provider_id='nowhere'). "
        f"{override_hint('nowhere:gpt-4o')}"
    )
    assert result.error == f"step answer: flujo_dagster.errors.PricingNotConfiguredError: {message}"
    starts = [
        e for e in instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_START) if e.step_key == "answer"
    ]
    retries = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert (len(starts), len(retries)) == (1, 0)
    (failure,) = instance.all_logs(result.run_id, of_type=DagsterEventType.STEP_FAILURE)
    data = failure.dagster_event.step_failure_data  # type: ignore[union-attr]
    assert data.error.message.strip() == (
        f"dagster._core.definitions.events.Failure: PricingNotConfiguredError at ask > agent:answer: {message}"
    )
    assert data.user_failure_data.metadata["flujo/error_class"].value == "PricingNotConfiguredError"
    assert data.error.cause.cls_name == "PricingNotConfiguredError"
    assert data.error.cause.message.strip() == f"flujo_dagster.errors.PricingNotConfiguredError: {message}"


def test_asset_materializations_carry_the_cost_of_the_step_that_made_them(instance: DagsterInstance) -> None:
    result = run_pipeline(
        digest, {"topic": "agents"}, instance=instance, resources={"agent_runtime": offline_runtime()}
    )
    assert result.success, result.error
    materializations = instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    (draft,) = [
        e.dagster_event.event_specific_data.materialization  # type: ignore[union-attr]
        for e in materializations
        if e.dagster_event is not None and e.dagster_event.asset_key == AssetKey(["digest", "draft"])
    ]
    metadata = {k: v.value for k, v in draft.metadata.items()}
    assert metadata["flujo/price_source"] == "offline"
    assert metadata["flujo/model"] == "function:offline-digest"
    (call,) = [c for c in result.agent_calls if c.step_path == "digest > agent:draft"]
    assert metadata["flujo/cost_usd"] == pytest.approx(float(call.cost_usd)) and call.cost_usd > 0
