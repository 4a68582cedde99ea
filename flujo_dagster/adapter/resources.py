"""`AgentRuntime`: the Dagster resource that runs agent steps; the injection point for models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic_ai import Agent
from pydantic_ai.models import Model
from pydantic_ai.models.function import FunctionModel
from pydantic_ai.models.test import TestModel

from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.runtime.agents import AgentCall, run_agent

__all__ = ["AgentRuntime", "ModelSource"]

ModelSource = Literal["agent", "override", "offline"]
OFFLINE_MODELS = (FunctionModel, TestModel)
"""Model classes that never call a provider: reported with model source `offline`."""
ModelChoice = Model | str


class AgentRuntime:
    """Runs agent steps; the resource `agent_runtime`.

    `model` replaces every agent step's model; `step_models` replaces it per step name (and wins).
    A value is a `provider:model` string or a pydantic-ai model object; pydantic-ai's `FunctionModel` and
    `TestModel` are reported with model source `offline`, anything else as `override`. Tests and the demo swap models
    here, never by patching. Without overrides each step runs on its agent's own model.
    """

    def __init__(
        self,
        *,
        model: ModelChoice | None = None,
        step_models: Mapping[str, ModelChoice] | None = None,
    ) -> None:
        self.model = model
        self.step_models: dict[str, ModelChoice] = dict(step_models or {})

    def model_for(self, step: AgentStep) -> tuple[ModelChoice | None, ModelSource]:
        """The model `step` runs on here, and where that choice came from."""
        chosen = self.step_models.get(step.name, self.model)
        if chosen is None:
            return (step.model if isinstance(step.model, str | Model) else None), "agent"
        return chosen, ("offline" if isinstance(chosen, OFFLINE_MODELS) else "override")

    async def run(self, step: AgentStep, prompt: str) -> tuple[AgentCall, ModelSource]:
        """Run `step`'s agent on `prompt` in the current event loop."""
        agent = step.agent
        if not isinstance(agent, Agent):
            raise TypeError(f"agent step {step.name!r} holds {type(agent).__name__}, not a pydantic-ai Agent")
        model, source = self.model_for(step)
        call = await run_agent(agent, prompt, model=model, model_settings=step.model_settings)
        return call, source
