"""`build_definitions`: validate every pipeline, compile it, and bundle jobs, assets and resources."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from dagster import Definitions, ExecutorDefinition, JobDefinition, SensorDefinition, in_process_executor

from flujo_dagster import config
from flujo_dagster.adapter.compile.compiler import CompiledPipeline, compile_pipeline
from flujo_dagster.adapter.compile.location import shared
from flujo_dagster.adapter.compile.schedules import schedules_for
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.adapter.control.decide_job import decide_job
from flujo_dagster.adapter.control.run_costs import costs_sensor
from flujo_dagster.adapter.control.sensors import location_approvals_sensor, validation_sensor
from flujo_dagster.adapter.storage.approval_settings import ApprovalSettings
from flujo_dagster.adapter.storage.budgets import InstanceLedger
from flujo_dagster.adapter.storage.call_cache import InstanceCallCache
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.adapter.storage.resources import AgentRuntime
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.flow import walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import (
    AGENT_RUNTIME_KEY,
    APPROVAL_SETTINGS_KEY,
    BUDGET_LEDGER_KEY,
    CALL_CACHE_KEY,
    IO_MANAGER_KEY,
    PRICE_BOOK_KEY,
)
from flujo_dagster.pricing.prices import Price, PriceBook
from flujo_dagster.validation import ValidationReport, validate
from flujo_dagster.validation.pricing import price_book

__all__ = [
    "build_definitions",
    "compile_all",
    "default_resources",
]

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

_log = logging.getLogger("flujo_dagster")
OnInvalid = Literal["raise", "quarantine"]


_DEFAULTS: dict[str, object] = {
    IO_MANAGER_KEY: shared(PydanticJsonIOManager()),
    AGENT_RUNTIME_KEY: AgentRuntime(),
    BUDGET_LEDGER_KEY: InstanceLedger(),
    CALL_CACHE_KEY: InstanceCallCache(),
    APPROVAL_SETTINGS_KEY: shared(ApprovalSettings()),
}
"""One object per default resource in the process: definitions built by several calls merge (Dagster merges a
resource key only when every definitions object holds the same object under it)."""


def default_resources(overrides: Mapping[str, object] | None = None) -> dict[str, object]:
    """The resources flujo ops need (`flujo_io_manager`, `agent_runtime`, `budget_ledger`, `call_cache`,
    `approval_settings`), with `overrides` applied. The defaults are the same objects at every call, and an
    override equal by value to one given before (a configurable resource, `ApprovalSettings`) is that earlier
    object, so that several `build_definitions` results merge in one code location."""
    resources = dict(_DEFAULTS)
    resources.update({key: shared(value) for key, value in (overrides or {}).items()})
    return resources


def compile_all(
    pipelines: Sequence[Pipeline],
    *,
    resources: Mapping[str, object] | None = None,
    prices: Mapping[str, Price] | None = None,
    strict_pricing: bool = True,
    pyproject: Path | None = None,
    translator: FlujoDagsterTranslator | None = None,
    executor: ExecutorDefinition | None = None,
    on_invalid: OnInvalid = "raise",
) -> tuple[list[CompiledPipeline], dict[str, object], ValidationReport]:
    """Validate (`validate`, with these settings; raising `ConfigurationError` listing every error finding,
    `PricingNotConfiguredError` when a model has no price) and compile each pipeline. Returns the compiled
    pipelines, their resources (the price book `price_book` included), and, with `on_invalid="quarantine"`, the
    error findings of the pipelines left out instead of raising."""
    chosen = default_resources(resources)
    runtime = chosen[AGENT_RUNTIME_KEY]
    if not isinstance(runtime, AgentRuntime):
        raise ConfigurationError(
            f"resource {AGENT_RUNTIME_KEY!r} must be an AgentRuntime, got {type(runtime).__name__}"
        )
    if PRICE_BOOK_KEY not in chosen:
        chosen[PRICE_BOOK_KEY] = shared(price_book(prices, runtime, strict=strict_pricing, pyproject=pyproject))
    book = chosen[PRICE_BOOK_KEY]
    if not isinstance(book, PriceBook):
        raise ConfigurationError(f"resource {PRICE_BOOK_KEY!r} must be a PriceBook, got {type(book).__name__}")
    translator = translator or FlujoDagsterTranslator()
    report = validate(pipelines, prices=book, runtime=runtime, translator=translator)
    for finding in report.warnings:
        _log.warning("%s", finding)
    quarantined = ValidationReport()
    if on_invalid == "quarantine" and report.errors:
        quarantined = ValidationReport(report.errors)
        for finding in report.errors:
            _log.error("quarantined: %s", finding)
        pipelines = [p for p in pipelines if p.name not in report.invalid_pipelines]
    else:
        report.raise_for_errors()
    try:
        compiled = [
            compile_pipeline(p, translator=translator, executor=executor, model_id=runtime.model_id_for)
            for p in pipelines
        ]
    except RecursionError as exc:  # V-SCALE refuses such sizes first; this is the last line of defence
        raise ConfigurationError(
            f"Dagster ran out of recursion depth building {[p.name for p in pipelines]}: the pipeline expands to "
            "too many ops. Mark loops and long step chains inline=True (or wrap them in Group(..., inline=True))."
        ) from exc
    assert len({c.job_name for c in compiled}) == len(compiled), "validation refuses it (V-JOB)"
    return compiled, chosen, quarantined


def build_definitions(
    *,
    pipelines: Iterable[Pipeline],
    resources: Mapping[str, object] | None = None,
    translator: FlujoDagsterTranslator | None = None,
    executor: ExecutorDefinition | None = in_process_executor,
    prices: Mapping[str, Price] | None = None,
    strict_pricing: bool = True,
    pyproject: Path | None = None,
    on_invalid: OnInvalid = "raise",
    webserver_url: str | None = None,
    approvals_interval: timedelta | None = None,
) -> Definitions:
    """Compile pipelines into `dagster.Definitions`: a job per pipeline (an asset job when it has assets),
    graph-backed assets, the flujo IO manager and the agent runtime.

    Every pipeline is validated first; any error finding raises `ConfigurationError` listing all of them,
    which stops the code location from loading (the UI shows the message). `executor` defaults to the
    in-process executor; pass `multiprocess_executor` for process isolation. `resources` adds to or
    replaces the defaults (`flujo_io_manager`, `agent_runtime`, `price_book`).

    Pricing is strict: every agent step's model needs a price (genai-prices' exact model id, an override
    from `prices` or `[tool.flujo_dagster.pricing]` of `pyproject` (default: the nearest pyproject.toml from
    the working directory up), or a price declared on the `AgentRuntime` for its models), else
    `PricingNotConfiguredError` (rule PRICE-001). `strict_pricing=False` accepts genai-prices' loose matches
    and is reported as a warning (PRICE-002).

    `on_invalid="quarantine"` leaves invalid pipelines out instead of raising (a load error would take the whole
    code location down, the approvals sensor and healthy pipelines included) and adds the `flujo_validation`
    sensor, which fails every tick with their findings so the problem stays visible in the UI.

    With approval gates, the location also gets the `flujo_decide` job and the `flujo_approvals` sensor (every
    `approvals_interval`), which resumes decided runs through the webserver's GraphQL API at `webserver_url`.
    Left None, they come from the environment (`FLUJO_DAGSTER_WEBSERVER_URL`, default http://127.0.0.1:3000;
    `FLUJO_DAGSTER_APPROVALS_INTERVAL_S`, default 30), read where the definitions load (docs/configuration.md).
    The `flujo_costs` sensor tags every finished run with its cost, tokens and calls (docs/costs.md).

    Several results merge with `Definitions.merge` (or as several components): they share the default resources,
    the decide job and the sensors, which serve every flujo job of the location (docs/component.md).
    """
    if on_invalid not in ("raise", "quarantine"):
        raise ConfigurationError(f"on_invalid={on_invalid!r} is not supported; use 'raise' or 'quarantine'")
    listed = list(pipelines)
    compiled, chosen, quarantined = compile_all(
        listed,
        resources=resources,
        prices=prices,
        strict_pricing=strict_pricing,
        pyproject=pyproject,
        translator=translator,
        executor=executor,
        on_invalid=on_invalid,
    )
    jobs: list[JobDefinition | UnresolvedAssetJobDefinition] = [c.job for c in compiled]
    sensors: list[SensorDefinition] = [costs_sensor()] if compiled else []
    if quarantined.errors:
        sensors.append(validation_sensor(quarantined))
    if any(isinstance(s, Approval) for p in listed for _, s in walk(p.steps, p.name)):
        jobs.append(decide_job())
        url, interval = config.webserver_url(webserver_url), config.approvals_interval(approvals_interval)
        settings = chosen[APPROVAL_SETTINGS_KEY]
        if not isinstance(settings, ApprovalSettings):
            raise ConfigurationError(
                f"resource {APPROVAL_SETTINGS_KEY!r} must be an ApprovalSettings, got {type(settings).__name__}"
            )
        sensors.append(location_approvals_sensor(url, interval, settings))
    return Definitions(
        assets=[c.assets for c in compiled if c.assets is not None],
        jobs=jobs,
        schedules=schedules_for(compiled, chosen),
        sensors=sensors,
        resources=chosen,
    )
