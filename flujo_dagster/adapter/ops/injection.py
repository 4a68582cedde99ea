"""What an op gives its steps from Dagster: resources from `context.resources`, and the op's execution context;
and the resource keys an op must declare for the steps it runs."""

from collections.abc import Iterable

from dagster import AssetExecutionContext, OpExecutionContext

from flujo_dagster.dsl.injection import ContextKind
from flujo_dagster.dsl.keys import resource_keys
from flujo_dagster.dsl.steps import Step
from flujo_dagster.errors import ConfigurationError

__all__ = ["OpInjector", "step_resource_keys"]


def step_resource_keys(steps: Iterable[Step]) -> set[str]:
    """The resource keys the leaf steps among `steps` use (an op declares them as `required_resource_keys`, so
    Dagster provides them and refuses definitions that lack one when they load)."""
    keys: set[str] = set()
    for step in steps:
        keys |= resource_keys(step)
    return keys


class OpInjector:
    """The leaf executor's `Injector` inside one op (expanded or inline)."""

    def __init__(self, context: OpExecutionContext) -> None:
        self.op_context = context

    def resource(self, key: str, *, path: str) -> object:
        """The resource under `key` from the op's resources."""
        resources = self.op_context.resources
        if not hasattr(resources, key):
            raise ConfigurationError(
                f"step {path} uses resource {key!r}, which its op was not given; pass it in resources= of "
                "build_definitions or run_pipeline"
            )
        value: object = getattr(resources, key)
        return value

    def context(self, kind: ContextKind, *, path: str) -> object:
        """The op's `OpExecutionContext`, or for `asset` its `AssetExecutionContext`, which Dagster gives only
        to ops that are part of an asset (a pipeline with `assets=`)."""
        if kind == "op":
            return self.op_context
        if not self.op_context.has_assets_def:
            raise ConfigurationError(
                f"step {path} asks for an AssetExecutionContext, but its op is not part of an asset (Dagster gives "
                "one only to ops of graph-backed assets); annotate it dagster.OpExecutionContext, or give the "
                "pipeline assets=[...]"
            )
        return AssetExecutionContext(self.op_context)
