"""`FlujoPipelineComponent`: declare a flujo pipeline in a `dg` project's `defs.yaml`.

The component resolves the pipeline (and optionally an agent runtime and a translator) by import path and calls
`build_definitions`, the same compiler every other entry point uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Literal

from dagster import AssetSpec, Definitions, ExecutorDefinition, in_process_executor, multiprocess_executor
from dagster.components import Component, ComponentLoadContext, Model, Resolvable, scaffold_with
from dagster.components.utils.translation import TranslationFn, TranslationFnResolver
from pydantic import Field

from flujo_dagster.adapter.compile.component_models import (
    BudgetModel,
    PartitionsModel,
    PriceModel,
    ScheduleModel,
    load_object,
)
from flujo_dagster.adapter.compile.definitions import build_definitions
from flujo_dagster.adapter.compile.location import LocationClaims, shared_import
from flujo_dagster.adapter.compile.scaffold import PipelineScaffolder
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.adapter.storage.resources import AgentRuntime
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import AGENT_RUNTIME_KEY, CONTEXT_OUTPUT
from flujo_dagster.pricing.prices import Price

__all__ = [
    "BudgetModel",
    "FlujoPipelineComponent",
    "PartitionsModel",
    "PriceModel",
    "ScheduleModel",
    "TranslationData",
    "TranslatorModel",
    "load_object",
]

_EXECUTORS: dict[str, ExecutorDefinition] = {
    "in_process": in_process_executor,
    "multiprocess": multiprocess_executor,
}


class TranslatorModel(Model):
    """How the pipeline's assets are named: a `FlujoDagsterTranslator` subclass by import path (built without
    arguments), and/or a key prefix and a group name applied on top of it."""

    type: str | None = Field(default=None, description="Import path of a FlujoDagsterTranslator subclass.")
    key_prefix: list[str] = Field(default_factory=list, description="Prepended to every asset key.")
    group_name: str | None = Field(default=None, description="The asset group of every asset of the pipeline.")


@dataclasses.dataclass(frozen=True)
class TranslationData:
    """What a `translation:` block's templates see of an asset: `{{ pipeline }}` (the pipeline's name), `{{ key }}`
    (the context key, or `final_context` for the final context) and, from Dagster, `{{ spec }}` (the spec so far)."""

    pipeline: str
    key: str


def _template_vars(data: TranslationData) -> dict[str, object]:
    return {"pipeline": data.pipeline, "key": data.key}


class _SettingsTranslator(FlujoDagsterTranslator):
    """Applies a key prefix and a group name (`translator:`), then the `translation:` block, over another
    translator's spec."""

    def __init__(
        self,
        base: FlujoDagsterTranslator,
        key_prefix: Sequence[str],
        group_name: str | None,
        translation: TranslationFn[TranslationData] | None,
    ) -> None:
        self.base = base
        self.key_prefix = list(key_prefix)
        self.group_name = group_name
        self.translation = translation

    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> AssetSpec:
        spec = self.base.get_asset_spec(pipeline, key)
        if self.key_prefix:
            spec = spec.replace_attributes(key=spec.key.with_prefix(self.key_prefix))
        if self.group_name is not None:
            spec = spec.replace_attributes(group_name=self.group_name)
        if self.translation is not None:
            spec = self.translation(spec, TranslationData(pipeline.name, key if key is not None else CONTEXT_OUTPUT))
        return spec

    def get_job_name(self, pipeline: Pipeline) -> str:
        return self.base.get_job_name(pipeline)


@scaffold_with(PipelineScaffolder)
class FlujoPipelineComponent(Component, Model, Resolvable):
    """A flujo_dagster pipeline (by import path) compiled to Dagster jobs and assets."""

    pipeline: str = Field(description="Import path of the Pipeline, e.g. 'mypkg.pipelines:digest'.")
    agent_runtime: str | None = Field(
        default=None,
        description="Import path of an AgentRuntime, or of a function without arguments returning one.",
    )
    prices: dict[str, PriceModel] = Field(
        default_factory=dict, description="Price overrides per 'provider:model' (win over pyproject.toml)."
    )
    strict_pricing: bool = True
    budget: BudgetModel | None = None
    translator: TranslatorModel | None = None
    translation: Annotated[
        TranslationFn[TranslationData] | None, TranslationFnResolver[TranslationData](_template_vars)
    ] = Field(
        default=None,
        description="Asset attributes (key, group_name, description, kinds, owners, tags, metadata, code_version, "
        "automation_condition, key_prefix) applied to every asset's spec, after `translator`; templates see "
        "{{ pipeline }}, {{ key }} and {{ spec }}.",
    )
    executor: Literal["in_process", "multiprocess"] = "in_process"
    schedule: ScheduleModel | None = None
    partitions: PartitionsModel | None = None
    context_asset: bool | None = Field(
        default=None, description="Make the final context an asset too (replaces the pipeline's own context_asset)."
    )

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        """Resolve the import paths and compile the pipeline with `build_definitions`. Several components of one
        code location share resources and sensors; a conflict between them is a `ConfigurationError` naming both."""
        pyproject = context.project_root / "pyproject.toml"
        defs = build_definitions(
            pipelines=[self.resolve_pipeline()],
            resources=self.resolve_resources(),
            translator=self.resolve_translator(),
            executor=_EXECUTORS[self.executor],
            prices=self.resolve_prices(),
            strict_pricing=self.strict_pricing,
            pyproject=pyproject if pyproject.is_file() else None,
        )
        where = (
            context.path.relative_to(context.defs_module_path)
            if context.path.is_relative_to(context.defs_module_path)
            else context.path
        )
        return LocationClaims.of(context.component_tree).claim(defs, str(where))

    def resolve_pipeline(self) -> Pipeline:
        """The pipeline at `pipeline`, with the `budget`, `schedule`, `partitions` and `context_asset` given here in
        place of its own."""
        pipeline = load_object(self.pipeline, "pipeline")
        if not isinstance(pipeline, Pipeline):
            raise ConfigurationError(f"pipeline: {self.pipeline!r} is a {type(pipeline).__name__}, not a Pipeline")
        if self.schedule is not None:
            pipeline = dataclasses.replace(pipeline, schedule=self.schedule.resolve())
        if self.partitions is not None:
            pipeline = dataclasses.replace(pipeline, partitions=self.partitions.resolve())
        if self.budget is not None:
            pipeline = dataclasses.replace(pipeline, budget=self.budget.resolve())
        if self.context_asset is not None:
            pipeline = dataclasses.replace(pipeline, context_asset=self.context_asset)
        return pipeline

    def resolve_resources(self) -> dict[str, object] | None:
        """`{"agent_runtime": ...}` from `agent_runtime`, or None for the default runtime. A function is called
        once per process, so components naming the same path share its runtime."""
        if self.agent_runtime is None:
            return None
        path = self.agent_runtime
        found = load_object(path, "agent_runtime")
        runtime = found if isinstance(found, AgentRuntime) or not callable(found) else shared_import(path, found)
        if not isinstance(runtime, AgentRuntime):
            raise ConfigurationError(
                f"agent_runtime: {self.agent_runtime!r} gave a {type(runtime).__name__}, not an AgentRuntime"
            )
        return {AGENT_RUNTIME_KEY: runtime}

    def resolve_prices(self) -> dict[str, Price]:
        """`prices` as `Price` objects."""
        return {model: price.resolve(f"prices[{model!r}]") for model, price in self.prices.items()}

    def resolve_translator(self) -> FlujoDagsterTranslator | None:
        """The translator `translator` and `translation` describe, or None for the default one."""
        if self.translator is None and self.translation is None:
            return None
        settings = self.translator or TranslatorModel()
        base: FlujoDagsterTranslator = FlujoDagsterTranslator()
        if settings.type is not None:
            cls = load_object(settings.type, "translator.type")
            if not (isinstance(cls, type) and issubclass(cls, FlujoDagsterTranslator)):
                raise ConfigurationError(f"translator.type: {settings.type!r} is not a FlujoDagsterTranslator subclass")
            base = cls()
        if not settings.key_prefix and settings.group_name is None and self.translation is None:
            return base
        return _SettingsTranslator(base, settings.key_prefix, settings.group_name, self.translation)
