"""An offline agent runtime: a scripted pydantic-ai `FunctionModel`, so the example never calls a provider."""

from __future__ import annotations

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Price

OFFLINE_MODEL_ID = "function:offline-digest"


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    prompts = [p.content for m in messages for p in getattr(m, "parts", ()) if isinstance(p, UserPromptPart)]
    prompt = str(prompts[-1]) if prompts else ""
    return ModelResponse(parts=[TextPart(f"Offline digest. {prompt}")], model_name="offline-digest")


def offline_runtime() -> AgentRuntime:
    """Every agent step on the scripted model, at a stand-in price (reported with price source `offline`)."""
    model = FunctionModel(_answer, model_name="offline-digest")
    return AgentRuntime(model=model, prices={OFFLINE_MODEL_ID: Price(input_per_mtok="0.25", output_per_mtok="2.00")})
