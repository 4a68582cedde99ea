"""Protocols shared by every layer. Nothing here imports dagster or pydantic_ai."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from flujo_dagster.dsl.pipeline import Pipeline
    from flujo_dagster.dsl.steps import AgentStep
    from flujo_dagster.pricing.prices import Price, PriceBook

__all__ = ["AgentLike", "AssetKeyLike", "AssetSpecLike", "ModelLike", "PipelineNaming", "PricingRuntime"]


@runtime_checkable
class ModelLike(Protocol):
    """What the DSL needs to know of a model object (a pydantic-ai `Model` fits)."""

    @property
    def model_name(self) -> str: ...

    @property
    def system(self) -> str: ...


@runtime_checkable
class AgentLike(Protocol):
    """What the DSL needs to know of an agent (a pydantic-ai `Agent` fits).

    The DSL only holds the agent; the runtime layer runs it.
    """

    @property
    def model(self) -> object: ...


class PricingRuntime(Protocol):
    """What validation needs of the agent runtime to price agent steps (`AgentRuntime` fits): the model each
    agent step runs on, and the price book with the prices it declares for its models."""

    def model_id_for(self, step: AgentStep) -> str | None: ...

    def price_book(self, overrides: Mapping[str, Price], *, strict: bool) -> PriceBook: ...


class AssetKeyLike(Protocol):
    """An asset key as the DSL and validation see it (a dagster `AssetKey` fits): `Pipeline(upstream=..., deps=...)`
    takes one, validation reads the translator's."""

    @property
    def path(self) -> Sequence[str]: ...


class AssetSpecLike(Protocol):
    """What validation needs of an asset spec (a dagster `AssetSpec` fits)."""

    @property
    def key(self) -> AssetKeyLike: ...


class PipelineNaming(Protocol):
    """How pipelines are named in Dagster, as far as validation checks the names (`FlujoDagsterTranslator` fits):
    the job name, and the asset key of each asset spec (`key` None: the final context)."""

    def get_job_name(self, pipeline: Pipeline) -> str: ...

    def get_asset_spec(self, pipeline: Pipeline, key: str | None) -> AssetSpecLike: ...
