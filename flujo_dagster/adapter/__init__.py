"""The only package that imports dagster, laid out by when its code runs (docs/architecture.md): `compile/` when
the definitions load, `ops/` inside a step, `control/` around runs, `storage/` underneath, `run.py` on top."""

from flujo_dagster.adapter.compile.compiler import CompiledPipeline, compile_pipeline
from flujo_dagster.adapter.compile.component import FlujoPipelineComponent
from flujo_dagster.adapter.compile.definitions import build_definitions
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.adapter.control.approvals import decide, pending, resume
from flujo_dagster.adapter.control.audit import audit_trail
from flujo_dagster.adapter.run import PipelineRun, arun_pipeline, load_final_context, run_pipeline
from flujo_dagster.adapter.storage.approval_settings import ApprovalSettings
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.adapter.storage.resources import AgentRuntime
from flujo_dagster.adapter.storage.runtime_config import ProviderSettings

__all__ = [
    "AgentRuntime",
    "ApprovalSettings",
    "CompiledPipeline",
    "FlujoDagsterTranslator",
    "FlujoPipelineComponent",
    "PipelineRun",
    "ProviderSettings",
    "PydanticJsonIOManager",
    "arun_pipeline",
    "audit_trail",
    "build_definitions",
    "compile_pipeline",
    "decide",
    "load_final_context",
    "pending",
    "resume",
    "run_pipeline",
]
