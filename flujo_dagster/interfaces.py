"""Protocols shared by every layer. Nothing here imports dagster or pydantic_ai."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["AgentLike", "ModelLike"]


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
