"""A scripted, offline stand-in for an LLM: pydantic-ai `FunctionModel`s used by the demo and the tests.

Nothing here calls a provider. Text answers are built from the prompt, so the output depends on the run.
"""

from __future__ import annotations

import json
import re

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from flujo_dagster import AgentRuntime, Price

OFFLINE_MODEL_NAME = "offline-digest"
OFFLINE_MODEL_ID = f"function:{OFFLINE_MODEL_NAME}"
OFFLINE_PRICE = Price(input_per_mtok="0.25", output_per_mtok="2.00")
"""A stand-in price (openai:gpt-5-mini's list price when written) so that the demo shows real-looking costs;
declared on the AgentRuntime and reported with price source `offline`."""
LOOKUP_TOOL = "lookup_customer"


def _last_prompt(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        for part in getattr(message, "parts", ()):
            if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                return part.content
    return ""


def _titles(prompt: str) -> list[str]:
    return re.findall(r'"title":\s*"([^"]+)"', prompt)


def _tool_returns(messages: list[ModelMessage]) -> list[str]:
    return [
        str(part.content)
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def _briefing(messages: list[ModelMessage], prompt: str) -> ModelResponse:
    """The orders briefing: look the top customer up with the agent's tool first, then write three lines."""
    looked_up = _tool_returns(messages)
    customers = re.findall(r'"customer_id":\s*"([^"]+)"', prompt)
    if not looked_up and customers:
        call = ToolCallPart(LOOKUP_TOOL, json.dumps({"customer_id": customers[0]}))
        return ModelResponse(parts=[call], model_name=OFFLINE_MODEL_NAME)
    amounts = re.findall(r'"amount_usd":\s*([0-9.]+)', prompt)
    total = sum(float(a) for a in amounts)
    top = looked_up[0] if looked_up else "no customer"
    lines = [f"Yesterday: {len(customers)} customers ordered ${total:,.2f} in total.", f"Top customer: {top}."]
    lines.append("Follow up with the top customer today.")
    return ModelResponse(parts=[TextPart("\n".join(lines))], model_name=OFFLINE_MODEL_NAME)


def scripted_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Draft text for free-text agents; a critique object for agents with a structured output; the orders
    briefing calls its customer lookup tool, then writes."""
    prompt = _last_prompt(messages)
    if any(tool.name == LOOKUP_TOOL for tool in info.function_tools):
        return _briefing(messages, prompt)
    titles = _titles(prompt)
    if info.output_tools:
        tool = info.output_tools[0]
        issues = [] if len(titles) >= 2 else ["fewer than two sources support the draft"]
        args = {"score": 8 if not issues else 5, "issues": issues, "verdict": "publish" if not issues else "revise"}
        return ModelResponse(parts=[ToolCallPart(tool.name, json.dumps(args))], model_name=OFFLINE_MODEL_NAME)
    topic = re.search(r"about (.+?)[.:\n]", prompt)
    subject = topic.group(1) if topic else "the topic"
    lines = [f"This week in {subject}: {len(titles)} sources stood out."]
    lines += [f"- {t}" for t in titles]
    return ModelResponse(parts=[TextPart("\n".join(lines))], model_name=OFFLINE_MODEL_NAME)


def offline_model() -> FunctionModel:
    """The scripted model, named `function:offline-digest` in metadata (model source `offline`)."""
    return FunctionModel(scripted_answer, model_name=OFFLINE_MODEL_NAME)


def offline_runtime() -> AgentRuntime:
    """The agent runtime of the demo and the tests: every agent step on the scripted model, at its stand-in
    price."""
    return AgentRuntime(model=offline_model(), prices={OFFLINE_MODEL_ID: OFFLINE_PRICE})
