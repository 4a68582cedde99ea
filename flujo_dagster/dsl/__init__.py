"""The pure pipeline DSL. Imports neither dagster nor pydantic_ai. `__all__` is the public DSL (what
`flujo_dagster` re-exports); helpers such as `walk` or `resolve_keys` are imported from their own modules."""

from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.cache import Cache
from flujo_dagster.dsl.checks import Check
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel
from flujo_dagster.dsl.decorators import agent_step, step
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.schedules import DailyPartitions, Schedule, StaticPartitions
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Retry, Step

__all__ = [
    "AgentStep",
    "Approval",
    "Branch",
    "Budget",
    "Cache",
    "Check",
    "DailyPartitions",
    "FunctionStep",
    "Group",
    "Loop",
    "Map",
    "Parallel",
    "Pipeline",
    "Retry",
    "Schedule",
    "StaticPartitions",
    "Step",
    "agent_step",
    "step",
]
