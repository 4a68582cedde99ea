"""The agent runtime resource: which model a step runs on, and how that choice is reported."""

from __future__ import annotations

from dagster._core.definitions.utils import DISALLOWED_NAMES  # private: checked here so our copy keeps up
from pydantic_ai import Agent
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.providers.openai import OpenAIProvider

from definitions.offline import scripted_answer
from flujo_dagster import AgentRuntime, agent_step
from flujo_dagster.names import DAGSTER_RESERVED_NAMES

writer = Agent("openai:gpt-5-mini", defer_model_check=True)
draft = agent_step("draft", agent=writer, prompt="{topic}")
title = agent_step("title", agent=writer, prompt="{topic}", model="anthropic:claude-sonnet-4-5")


def test_model_sources() -> None:
    function_model = FunctionModel(scripted_answer, model_name="scripted")
    real = OpenAIChatModel("gpt-4o", provider=OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key="k"))
    assert AgentRuntime().model_for(draft) == (None, "agent")
    assert AgentRuntime().model_for(title) == ("anthropic:claude-sonnet-4-5", "agent")
    assert AgentRuntime(model=function_model).model_for(draft) == (function_model, "offline")
    test_model = TestModel()
    assert AgentRuntime(model=test_model).model_for(draft) == (test_model, "offline")
    assert AgentRuntime(model=real).model_for(draft) == (real, "override")
    assert AgentRuntime(model="openai:gpt-5").model_for(draft) == ("openai:gpt-5", "override")
    per_step = AgentRuntime(model="openai:gpt-5", step_models={"title": function_model})
    assert per_step.model_for(title) == (function_model, "offline")
    assert per_step.model_for(draft) == ("openai:gpt-5", "override")


def test_reserved_names_cover_dagsters_own() -> None:
    assert set(DISALLOWED_NAMES) <= DAGSTER_RESERVED_NAMES
