"""flujo_dagster: typed AI-agent pipelines compiled to Dagster jobs and assets.

The DSL and validation names import without dagster; the Dagster-facing names (`build_definitions`,
`run_pipeline`, resources, IO manager, translator) load dagster on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flujo_dagster.dsl import (
    AgentStep,
    Approval,
    Branch,
    Budget,
    Cache,
    Check,
    DailyPartitions,
    FunctionStep,
    Group,
    Loop,
    Map,
    Parallel,
    Pipeline,
    Retry,
    Schedule,
    StaticPartitions,
    Step,
    agent_step,
    step,
)
from flujo_dagster.errors import (
    ApprovalError,
    ApprovalRejectedError,
    ConfigurationError,
    ControlFlowError,
    FlujoDagsterError,
    ParallelBranchError,
    PricingNotConfiguredError,
    RunInputsError,
    StepOutputError,
    StorageError,
    UsageLimitExceededError,
)
from flujo_dagster.pricing.prices import Price, PriceBook
from flujo_dagster.validation import Finding, ValidationReport, validate

if TYPE_CHECKING:
    from flujo_dagster.adapter import (
        AgentRuntime,
        ApprovalSettings,
        FlujoDagsterTranslator,
        FlujoPipelineComponent,
        PipelineRun,
        ProviderSettings,
        PydanticJsonIOManager,
        arun_pipeline,
        audit_trail,
        build_definitions,
        decide,
        load_final_context,
        pending,
        resume,
        run_pipeline,
    )

_ADAPTER_NAMES = frozenset(
    {
        "AgentRuntime",
        "ApprovalSettings",
        "FlujoDagsterTranslator",
        "FlujoPipelineComponent",
        "PipelineRun",
        "ProviderSettings",
        "PydanticJsonIOManager",
        "arun_pipeline",
        "audit_trail",
        "build_definitions",
        "decide",
        "load_final_context",
        "pending",
        "resume",
        "run_pipeline",
    }
)

__all__ = [
    "AgentRuntime",
    "AgentStep",
    "Approval",
    "ApprovalError",
    "ApprovalRejectedError",
    "ApprovalSettings",
    "Branch",
    "Budget",
    "Cache",
    "Check",
    "ConfigurationError",
    "ControlFlowError",
    "DailyPartitions",
    "Finding",
    "FlujoDagsterError",
    "FlujoDagsterTranslator",
    "FlujoPipelineComponent",
    "FunctionStep",
    "Group",
    "Loop",
    "Map",
    "Parallel",
    "Price",
    "PriceBook",
    "ParallelBranchError",
    "Pipeline",
    "PipelineRun",
    "PricingNotConfiguredError",
    "ProviderSettings",
    "PydanticJsonIOManager",
    "Retry",
    "RunInputsError",
    "Schedule",
    "StaticPartitions",
    "Step",
    "StepOutputError",
    "StorageError",
    "UsageLimitExceededError",
    "ValidationReport",
    "agent_step",
    "arun_pipeline",
    "audit_trail",
    "build_definitions",
    "decide",
    "load_final_context",
    "pending",
    "resume",
    "run_pipeline",
    "step",
    "validate",
]


def __dir__() -> list[str]:
    """Module names plus the lazy adapter names (`dg list components` finds `FlujoPipelineComponent` here)."""
    return sorted({*globals(), *_ADAPTER_NAMES})


def __getattr__(name: str) -> object:
    if name in _ADAPTER_NAMES:
        return getattr(importlib.import_module("flujo_dagster.adapter"), name)
    raise AttributeError(f"module 'flujo_dagster' has no attribute {name!r}")
