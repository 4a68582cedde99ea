"""`run_pipeline`: run a pipeline on a Dagster instance from Python and read its typed final context."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Generic

import anyio.to_thread
from dagster import (
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
)

from flujo_dagster import config
from flujo_dagster.adapter.compile.compiler import CompiledPipeline
from flujo_dagster.adapter.compile.definitions import compile_all
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.adapter.control.approvals import PendingApproval, gates_waiting
from flujo_dagster.adapter.control.costs import AgentCallSummary, agent_calls
from flujo_dagster.adapter.ops.park import parked_gates
from flujo_dagster.adapter.storage.io_manager import Origin, PydanticJsonIOManager, StoredKey
from flujo_dagster.dsl.pipeline import Ctx, Pipeline
from flujo_dagster.errors import ConfigurationError, FlujoDagsterError
from flujo_dagster.names import CONTEXT_KEY, CONTEXT_OP, CONTEXT_OUTPUT, IO_MANAGER_KEY, step_key
from flujo_dagster.pricing.prices import Price
from flujo_dagster.runtime.inputs import config_inputs
from flujo_dagster.runtime.sync import call_blocking
from flujo_dagster.validation.schedules import partition_input

__all__ = ["PipelineRun", "arun_pipeline", "load_final_context", "run_pipeline"]


@dataclass(frozen=True, kw_only=True)
class PipelineRun(Generic[Ctx]):
    """The outcome of one run: its id, whether it succeeded, the final context (typed as the pipeline's context
    model), and the failure; or, when it parked at approval gates (not a failure in Dagster, but no final
    context yet), the gates it waits at (`parked`). `final_context` is None when the run failed or parked;
    `context` raises then."""

    run_id: str
    success: bool
    final_context: Ctx | None
    error: str | None = None
    agent_calls: tuple[AgentCallSummary, ...] = ()
    parked: tuple[PendingApproval, ...] = ()

    @property
    def context(self) -> Ctx:
        """The final context; `FlujoDagsterError` naming the run and what failed when it failed."""
        return self.raise_for_failure()

    def raise_for_failure(self) -> Ctx:
        """The final context, or `FlujoDagsterError` naming the run and what failed (or where it parked)."""
        if self.parked:
            raise FlujoDagsterError(f"run {self.run_id} is parked, waiting for a decision: {self.error}")
        if not self.success or self.final_context is None:
            raise FlujoDagsterError(f"run {self.run_id} failed: {self.error}")
        return self.final_context


def load_final_context(
    pipeline: Pipeline[Ctx],
    run_id: str,
    *,
    instance: DagsterInstance,
    io_manager: PydanticJsonIOManager | None = None,
) -> Ctx:
    """The validated final context that run `run_id` of `pipeline` stored (any executor, any launcher).

    Raises `StorageError` naming the run and file when the run did not finish its `flujo_context` step.
    """
    io = io_manager or PydanticJsonIOManager()
    root = io.root(instance.storage_directory())
    context_step = step_key(pipeline.name, bool(pipeline.assets), CONTEXT_OP)
    path = io.output_path(root, run_id, context_step, CONTEXT_OUTPUT)
    value = io.read(path, StoredKey(CONTEXT_KEY, pipeline.context), where=Origin(run_id, context_step), root=root)
    assert isinstance(value, pipeline.context)  # `read` validated it as the context model
    return value


def _is_wrapper(cls_name: str) -> bool:
    """Dagster's own wrappers, and the `Failure(allow_retries=False)` flujo raises around its errors."""
    return cls_name.startswith("Dagster") or cls_name == "Failure"


def _failure(result: ExecuteInProcessResult) -> str | None:
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data is not None:
            err = event.step_failure_data.error
            while err is not None and err.cause is not None and _is_wrapper(err.cls_name or ""):
                # report the step's own error, not Dagster's wrapper around it
                err = err.cause
            message = err.message.strip() if err is not None else "unknown error"
            return f"step {event.step_key}: {message}"
    return None if result.success else "the run failed; see its event log"


def _definitions(compiled: CompiledPipeline, resources: Mapping[str, object]) -> Definitions:
    """The one pipeline's definitions, with the assets it reads declared as external assets (Dagster loads each
    with the `io_manager` resource)."""
    upstream = [AssetSpec(AssetKey(list(path))) for path in dict.fromkeys(compiled.pipeline.upstream.values())]
    assets: list[AssetsDefinition | AssetSpec] = [compiled.assets, *upstream] if compiled.assets is not None else []
    return Definitions(assets=assets, jobs=[compiled.job], resources=resources)


def run_pipeline(
    pipeline: Pipeline[Ctx],
    inputs: Mapping[str, object] | None = None,
    *,
    resources: Mapping[str, object] | None = None,
    instance: DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    translator: FlujoDagsterTranslator | None = None,
    log_level: str | None = None,
    prices: Mapping[str, Price] | None = None,
    strict_pricing: bool = True,
    partition_key: str | None = None,
) -> PipelineRun[Ctx]:
    """Validate the pipeline and its inputs, run it in process on `instance`, and return the typed result.

    Bad inputs raise `RunInputsError` (every bad input, checked with the whole context model) before anything
    runs. Without `instance`, uses the
    instance of `DAGSTER_HOME` when it is set, else a temporary one. Safe to call from inside a running
    event loop (a notebook, an async test): the run then happens in anyio's worker thread.
    `log_level` sets Dagster's console logger (e.g. "WARNING" to hide the per-event DEBUG lines).
    `partition_key` runs one partition of a partitioned pipeline (it fills the partition's context field).
    Upstream keys are loaded from their assets' latest materializations on `instance` with the `io_manager`
    resource (Dagster's default filesystem IO manager unless `resources` gives another): here the upstream assets
    are external, their own definitions (and IO managers) are not known.
    """
    raw = dict(inputs or {})
    key_field = partition_input(pipeline)
    if (key_field is None) != (partition_key is None):
        raise ConfigurationError(
            f"pipeline {pipeline.name!r} is partitioned: pass partition_key=..."
            if key_field is not None
            else f"pipeline {pipeline.name!r} is not partitioned: partition_key={partition_key!r} has no meaning"
        )
    # what the run's config can hold, in the form its typed schema expects
    given = config_inputs(pipeline, raw, {key_field: partition_key} if key_field is not None else None)
    (compiled,), chosen, _ = compile_all(
        [pipeline], resources=resources, prices=prices, strict_pricing=strict_pricing, translator=translator
    )
    job = _definitions(compiled, chosen).resolve_job_def(compiled.job_name)
    run_config = compiled.inputs_run_config(given)
    if log_level is not None:
        run_config["loggers"] = {"console": {"config": {"log_level": log_level}}}
    with ExitStack() as stack:
        if instance is None:
            home = config.dagster_home()
            instance = stack.enter_context(DagsterInstance.get() if home else DagsterInstance.ephemeral())
        result = call_blocking(
            functools.partial(
                job.execute_in_process,
                run_config=run_config,
                instance=instance,
                tags=dict(tags or {}),
                raise_on_error=False,
                partition_key=partition_key,
            )
        )
        context: Ctx | None = None
        stored = instance.get_run_by_id(result.run_id)
        parked = tuple(gates_waiting(instance, stored)) if stored and parked_gates(stored.tags, stored.run_id) else ()
        if result.success and not parked:
            io = chosen[IO_MANAGER_KEY]
            if not isinstance(io, PydanticJsonIOManager):
                raise ConfigurationError(
                    f"run {result.run_id} succeeded, but resource {IO_MANAGER_KEY!r} is a {type(io).__name__}, "
                    "not a configured PydanticJsonIOManager, so its final context cannot be read here; pass "
                    "PydanticJsonIOManager(base_dir=...) or use load_final_context(...) with one."
                )
            context = load_final_context(pipeline, result.run_id, instance=instance, io_manager=io)
        waiting = "; ".join(f"parked at {p.path}: waiting for {p.waiting_for}" for p in parked)
        return PipelineRun(
            run_id=result.run_id,
            success=result.success and not parked,
            final_context=context,
            error=_failure(result) or waiting or None,
            agent_calls=agent_calls(result.all_events, result.run_id),
            parked=parked,
        )


async def arun_pipeline(
    pipeline: Pipeline[Ctx],
    inputs: Mapping[str, object] | None = None,
    *,
    resources: Mapping[str, object] | None = None,
    instance: DagsterInstance | None = None,
    tags: Mapping[str, str] | None = None,
    translator: FlujoDagsterTranslator | None = None,
    log_level: str | None = None,
    prices: Mapping[str, Price] | None = None,
    strict_pricing: bool = True,
    partition_key: str | None = None,
) -> PipelineRun[Ctx]:
    """`run_pipeline` for async code: the run happens in anyio's worker thread."""
    call = functools.partial(
        run_pipeline,
        pipeline,
        inputs,
        resources=resources,
        instance=instance,
        tags=tags,
        translator=translator,
        log_level=log_level,
        prices=prices,
        strict_pricing=strict_pricing,
        partition_key=partition_key,
    )
    return await anyio.to_thread.run_sync(call)
