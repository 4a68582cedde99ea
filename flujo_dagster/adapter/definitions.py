"""`build_definitions`: validate every pipeline, compile it, and bundle jobs, assets and resources."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from dagster import Definitions, ExecutorDefinition, in_process_executor

from flujo_dagster.adapter.compiler import CompiledPipeline, compile_pipeline
from flujo_dagster.adapter.io_manager import PydanticJsonIOManager
from flujo_dagster.adapter.ops import AGENT_RUNTIME_KEY, IO_MANAGER_KEY
from flujo_dagster.adapter.resources import AgentRuntime
from flujo_dagster.adapter.translator import FlujoDagsterTranslator
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.validation import validate

__all__ = ["build_definitions", "compile_all", "default_resources"]

_log = logging.getLogger("flujo_dagster")


def default_resources(overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The resources flujo ops need (`flujo_io_manager`, `agent_runtime`), with `overrides` applied."""
    resources: dict[str, object] = {IO_MANAGER_KEY: PydanticJsonIOManager(), AGENT_RUNTIME_KEY: AgentRuntime()}
    resources.update(overrides or {})
    return resources


def compile_all(
    pipelines: Sequence[Pipeline],
    *,
    translator: FlujoDagsterTranslator | None = None,
    executor: ExecutorDefinition | None = None,
) -> list[CompiledPipeline]:
    """Validate (raising `ConfigurationError` listing every error finding) and compile each pipeline."""
    report = validate(pipelines)
    for finding in report.warnings:
        _log.warning("%s", finding.render())
    report.raise_for_errors()
    chosen = translator or FlujoDagsterTranslator()
    try:
        compiled = [compile_pipeline(p, translator=chosen, executor=executor) for p in pipelines]
    except RecursionError as exc:  # V-SCALE refuses such sizes first; this is the last line of defence
        raise ConfigurationError(
            f"Dagster ran out of recursion depth building {[p.name for p in pipelines]}: the pipeline expands to "
            "too many ops. Mark loops and long step chains inline=True (or wrap them in Group(..., inline=True))."
        ) from exc
    names = [c.job_name for c in compiled]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigurationError(
            f"two pipelines compile to the same job name(s) {duplicates}: give each pipeline a unique name"
        )
    return compiled


def build_definitions(
    *,
    pipelines: Iterable[Pipeline],
    resources: Mapping[str, object] | None = None,
    translator: FlujoDagsterTranslator | None = None,
    executor: ExecutorDefinition | None = in_process_executor,
    on_invalid: Literal["raise"] = "raise",
) -> Definitions:
    """Compile pipelines into `dagster.Definitions`: a job per pipeline (an asset job when it has assets),
    graph-backed assets, the flujo IO manager and the agent runtime.

    Every pipeline is validated first; any error finding raises `ConfigurationError` listing all of them,
    which stops the code location from loading (the UI shows the message). `executor` defaults to the
    in-process executor; pass `multiprocess_executor` for process isolation. `resources` adds to or
    replaces the defaults (`flujo_io_manager`, `agent_runtime`).
    """
    if on_invalid != "raise":
        raise ConfigurationError(f"on_invalid={on_invalid!r} is not supported; use 'raise'")
    compiled = compile_all(list(pipelines), translator=translator, executor=executor)
    return Definitions(
        assets=[c.assets for c in compiled if c.assets is not None],
        jobs=[c.job for c in compiled],
        resources=default_resources(resources),
    )
