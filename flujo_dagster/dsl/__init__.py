"""The pure pipeline DSL. Imports neither dagster nor pydantic_ai."""

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.checks import Check
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel
from flujo_dagster.dsl.decorators import agent_step, step
from flujo_dagster.dsl.flow import Flow, flow_of, flow_of_steps, walk
from flujo_dagster.dsl.keys import StepKeys, resolve_keys
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.schedules import DailyPartitions, Schedule, StaticPartitions
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Retry, Step, StepSequence, model_id_of

__all__ = [
    "AgentStep",
    "Approval",
    "Branch",
    "Budget",
    "Check",
    "DailyPartitions",
    "Flow",
    "Group",
    "Loop",
    "Map",
    "Parallel",
    "FunctionStep",
    "Pipeline",
    "Retry",
    "Schedule",
    "Step",
    "StepKeys",
    "StepSequence",
    "StaticPartitions",
    "agent_step",
    "flow_of",
    "flow_of_steps",
    "model_id_of",
    "resolve_keys",
    "step",
    "walk",
]
