"""Building an agent's prompt from context keys."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel
from pydantic_core import to_json

from flujo_dagster.dsl.steps import AgentStep

__all__ = ["PromptValue", "render_prompt"]


class PromptValue:
    """A key's value as a template sees it: strings and numbers as themselves, anything else as JSON.

    Attribute and item access (`{source.title}`, `{sources[0]}`) reach into the real value.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        v = self.value
        if isinstance(v, str | int | float | bool) or v is None:
            return format(v, spec)
        if isinstance(v, BaseModel):
            return v.model_dump_json(indent=2)
        return to_json(v, indent=2).decode()

    def __str__(self) -> str:
        return self.__format__("")

    def __getattr__(self, name: str) -> PromptValue:
        return PromptValue(getattr(self.value, name))

    def __getitem__(self, item: object) -> PromptValue:
        return PromptValue(self.value[item])  # type: ignore[index]


def render_prompt(step: AgentStep, values: Mapping[str, object]) -> str:
    """The prompt for `step`: its template formatted with `values`, or its callable called with them."""
    if isinstance(step.prompt, str):
        return step.prompt.format(**{k: PromptValue(v) for k, v in values.items()})
    return step.prompt(**values)
