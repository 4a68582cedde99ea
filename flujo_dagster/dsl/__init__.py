"""The pure pipeline DSL. Imports neither dagster nor pydantic_ai."""

from flujo_dagster.dsl.decorators import agent_step, step
from flujo_dagster.dsl.keys import StepKeys, resolve_keys
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Retry, Step, StepSequence, model_id_of

__all__ = [
    "AgentStep",
    "FunctionStep",
    "Pipeline",
    "Retry",
    "Step",
    "StepKeys",
    "StepSequence",
    "agent_step",
    "model_id_of",
    "resolve_keys",
    "step",
]
