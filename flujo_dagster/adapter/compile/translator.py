"""`FlujoDagsterTranslator`: how pipelines and keys are named in Dagster. Subclass it to change names."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import AssetKey

from flujo_dagster import names
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.validation.typecompat import type_name

__all__ = ["FlujoDagsterTranslator"]


class FlujoDagsterTranslator:
    """Decides asset keys, groups, descriptions, tags and metadata of a pipeline's assets, and job names.

    Override any method in a subclass and pass an instance as `build_definitions(translator=...)`.
    Defaults: asset key `[pipeline, key]`, group = pipeline name, job name = pipeline name.
    """

    def get_asset_key(self, pipeline: Pipeline, key: str) -> AssetKey:
        """The asset key of context key `key`."""
        return AssetKey([pipeline.name, key])

    def get_context_asset_key(self, pipeline: Pipeline) -> AssetKey:
        """The asset key of the pipeline's final context (the run's typed result)."""
        return AssetKey([pipeline.name, "final_context"])

    def get_group_name(self, pipeline: Pipeline, key: str | None) -> str | None:
        """The asset group of `key` (None: the final context)."""
        return pipeline.name

    def get_description(self, pipeline: Pipeline, key: str | None) -> str | None:
        """The asset description: the context field's description, if any (None: the final context)."""
        if key is None:
            return f"The final, validated {pipeline.context.__name__} of pipeline {pipeline.name!r}."
        field = pipeline.context.model_fields[key]
        return field.description or f"Context key {key!r} of pipeline {pipeline.name!r}."

    def get_tags(self, pipeline: Pipeline, key: str | None) -> Mapping[str, str]:
        """Asset tags of `key` (None: the final context)."""
        return {}

    def get_metadata(self, pipeline: Pipeline, key: str | None) -> Mapping[str, object]:
        """Definition metadata of the asset for `key` (None: the final context)."""
        if key is None:
            return {names.PIPELINE: pipeline.name, names.TYPE: pipeline.context.__name__}
        return {names.PIPELINE: pipeline.name, names.KEY: key, names.TYPE: type_name(pipeline.fields[key])}

    def get_job_name(self, pipeline: Pipeline) -> str:
        """The name of the job that runs `pipeline`."""
        return pipeline.name
