"""`FlujoDagsterTranslator`: how pipelines and keys appear in Dagster. Subclass it and override `get_asset_spec`
(like dagster-dbt's and dagster-sling's translators) to change an asset's key, group, kinds, owners, tags, ..."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from dagster import AssetKey, AssetSpec

from flujo_dagster import names
from flujo_dagster.dsl.control import Map
from flujo_dagster.dsl.flow import children
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep, FunctionStep, Step
from flujo_dagster.validation.typecompat import type_name

__all__ = ["AGENT_KIND", "MAX_KINDS", "PYTHON_KIND", "FlujoDagsterTranslator", "producer_kinds"]

AGENT_KIND = "pydantic-ai"
"""The kind of an asset that an agent step produces (beside its model's provider, e.g. `openai`)."""
PYTHON_KIND = "python"
"""The kind of an asset that a function step produces."""
MAX_KINDS = 10
"""Dagster refuses an asset with more kinds than this."""


def _leaves(steps: Sequence[Step]) -> Iterator[Step]:
    for step in steps:
        yield step
        for _, inner in children(step):
            yield from _leaves(inner)


def _producers(pipeline: Pipeline, steps: Sequence[Step], key: str | None) -> Iterator[Step]:
    """The function and agent steps that write `key` (None: every step; a Map's `into`: its whole body)."""
    for step in steps:
        if key is None or (isinstance(step, Map) and step.into == key):
            yield from (s for s in _leaves([step]) if isinstance(s, FunctionStep | AgentStep))
        elif isinstance(step, FunctionStep | AgentStep):
            if key in (pipeline.keys_of(step).writes or ()):
                yield step
        else:
            for _, inner in children(step):
                yield from _producers(pipeline, inner, key)


def producer_kinds(pipeline: Pipeline, key: str | None) -> set[str]:
    """The kinds of the asset of `key` (None: the final context): `pydantic-ai` and each provider of the models
    of the agent steps that write it (e.g. `openai`), `python` when a function step writes it; at most
    `MAX_KINDS`, providers in name order."""
    agents, functions, providers = False, False, set[str]()
    for step in _producers(pipeline, pipeline.steps, key):
        if isinstance(step, AgentStep):
            agents = True
            model = step.model_id()
            if model and ":" in model:
                providers.add(model.partition(":")[0])
        else:
            functions = True
    kinds = [*([AGENT_KIND] if agents else []), *([PYTHON_KIND] if functions else []), *sorted(providers)]
    return set(kinds[:MAX_KINDS])


class FlujoDagsterTranslator:
    """Decides the `AssetSpec` of each of a pipeline's assets, and job names.

    Override `get_asset_spec` in a subclass (adjust the default with `spec.replace_attributes(...)` or
    `spec.merge_attributes(...)`) and pass an instance as `build_definitions(translator=...)`. The default spec
    is built from the per-field getters below (`get_asset_key`, `get_group_name`, ...), which older subclasses
    override; they keep working. Defaults: asset key `[pipeline, key]`, group = pipeline name, kinds from the
    producing steps (`producer_kinds`), no owners, no automation condition, job name = pipeline name, and flujo's
    code version: `get_code_version` returns None, which the compiler replaces with the version of the steps that
    make the asset (prompts, models, settings, output types, tools, function sources; docs/assets.md, "Staleness
    and code versions"), so that Dagster marks the asset stale when one of them changes. A spec with a code
    version of its own (from `get_code_version`, or set in an override) keeps it. Of the spec, the compiler uses
    key, group, description, metadata, tags and kinds, owners, code version and automation condition; lineage
    (`deps`) and partitions come from the pipeline.
    """

    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> AssetSpec:
        """The spec of the asset of context key `key` (None: the final context, when it is an asset)."""
        return AssetSpec(
            key=self.get_asset_key(pipeline, key) if key is not None else self.get_context_asset_key(pipeline),
            group_name=self.get_group_name(pipeline, key),
            description=self.get_description(pipeline, key),
            metadata=self.get_metadata(pipeline, key),
            tags=self.get_tags(pipeline, key),
            kinds=producer_kinds(pipeline, key),
            code_version=self.get_code_version(pipeline, key),
        )

    def get_code_version(self, pipeline: Pipeline, key: str | None) -> str | None:
        """The asset's code version (used by the default `get_asset_spec`); None, the default: flujo's, from the
        steps that make it, set by the compiler."""
        return None

    def get_asset_key(self, pipeline: Pipeline, key: str) -> AssetKey:
        """The asset key of context key `key` (used by the default `get_asset_spec`)."""
        return AssetKey([pipeline.name, key])

    def get_context_asset_key(self, pipeline: Pipeline) -> AssetKey:
        """The asset key of the pipeline's final context (used by the default `get_asset_spec`)."""
        return AssetKey([pipeline.name, names.CONTEXT_OUTPUT])

    def get_group_name(self, pipeline: Pipeline, key: str | None) -> str | None:
        """The asset group of `key` (None: the final context; used by the default `get_asset_spec`)."""
        return pipeline.name

    def get_description(self, pipeline: Pipeline, key: str | None) -> str | None:
        """The asset description: the context field's description, if any (None: the final context; used by
        the default `get_asset_spec`)."""
        if key is None:
            return f"The final, validated {pipeline.context.__name__} of pipeline {pipeline.name!r}."
        field = pipeline.context.model_fields[key]
        return field.description or f"Context key {key!r} of pipeline {pipeline.name!r}."

    def get_tags(self, pipeline: Pipeline, key: str | None) -> Mapping[str, str]:
        """Asset tags of `key` (None: the final context; used by the default `get_asset_spec`)."""
        return {}

    def get_metadata(self, pipeline: Pipeline, key: str | None) -> Mapping[str, object]:
        """Definition metadata of the asset for `key` (None: the final context; used by the default
        `get_asset_spec`)."""
        if key is None:
            return {names.PIPELINE: pipeline.name, names.TYPE: pipeline.context.__name__}
        return {names.PIPELINE: pipeline.name, names.KEY: key, names.TYPE: type_name(pipeline.fields[key])}

    def get_job_name(self, pipeline: Pipeline) -> str:
        """The name of the job that runs `pipeline`."""
        return pipeline.name
