"""Ops of a graph-backed asset run in a subset. Dagster refuses an output that is not selected and wants every
required output, selected or not (its subsettable assets declare their outputs optional). So each op yields only
its selected outputs, its outputs are declared optional, and the wrapper itself requires the selected ones that
were required: a missing value still fails the step, and a missing `Nothing` output is emitted, as Dagster does."""

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, cast

from dagster import (
    AssetKey,
    DagsterStepOutputNotFoundError,
    DynamicOutput,
    GraphDefinition,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
)
from dagster._core.definitions.dependency import NodeHandle

from flujo_dagster.adapter.storage.io_manager import latest_materialization, materialized_before, never_materialized
from flujo_dagster.adapter.storage.types import KeyType
from flujo_dagster.errors import StorageError

__all__ = ["check_subset_upstream", "selected_outputs_only"]


class _Outputs:
    """One execution's selection (None: every output) and the outputs yielded so far."""

    def __init__(self, context: OpExecutionContext) -> None:
        self.selected = frozenset(context.selected_output_names) if context.is_subset else None
        self.seen: set[str] = set()

    def keep(self, event: object) -> bool:
        if not isinstance(event, Output | DynamicOutput):
            return True
        if self.selected is not None and event.output_name not in self.selected:
            return False
        self.seen.add(event.output_name)
        return True

    def missing(self, context: OpExecutionContext, required: Iterable[tuple[str, bool]]) -> Iterator[Output[Any]]:
        """The implicit `Nothing` outputs; raises for a required value that was not yielded."""
        for name, nothing in required:
            if name in self.seen or (self.selected is not None and name not in self.selected):
                continue
            if not nothing:
                raise DagsterStepOutputNotFoundError(  # type: ignore[no-untyped-call]
                    f"Core compute for op {context.op_handle.name!r} did not return an output for non-optional "
                    f"output {name!r}",
                    step_key=context.get_step_execution_context().step.key,
                    output_name=name,
                )
            yield Output(None, name)


def selected_outputs_only(definition: OpDefinition) -> OpDefinition:
    """`definition` (a generator op) yielding, in a subset run, only its selected outputs."""
    inner = definition.compute_fn
    required = [
        (o.name, o.dagster_type.is_nothing) for o in definition.output_defs if o.is_required and not o.is_dynamic
    ]
    compute: Callable[..., Any]
    if callable(inner) and inspect.isasyncgenfunction(inner):
        agen = cast(Callable[[OpExecutionContext, dict[str, Any]], AsyncIterator[Any]], inner)

        async def acompute(context: OpExecutionContext, inputs: dict[str, Any]) -> AsyncIterator[Any]:
            outputs = _Outputs(context)
            async for event in agen(context, inputs):
                if outputs.keep(event):
                    yield event
            for event in outputs.missing(context, required):
                yield event

        compute = acompute
    elif callable(inner) and inspect.isgeneratorfunction(inner):
        gen = cast(Callable[[OpExecutionContext, dict[str, Any]], Iterator[Any]], inner)

        def scompute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Any]:
            outputs = _Outputs(context)
            yield from (event for event in gen(context, inputs) if outputs.keep(event))
            yield from outputs.missing(context, required)

        compute = scompute
    else:
        return definition
    return OpDefinition(
        compute_fn=compute,
        name=definition.name,
        ins=dict(definition.ins),
        outs={name: _optional(out) for name, out in definition.outs.items()},
        config_schema=definition.config_schema,
        description=definition.description,
        tags=definition.tags,
        required_resource_keys=set(definition.required_resource_keys),
        retry_policy=definition.retry_policy,
        code_version=definition._version,  # no public getter in 1.13 (`version` is deprecated)
        pool=definition.pool,
    )


def _optional(out: Out) -> Out:
    return out if out.is_dynamic or not out.is_required else out._replace(is_required=False)


def _loaded_keys(context: OpExecutionContext) -> dict[AssetKey, str]:
    """The assets of this pipeline the subset run loads (an input of a key type whose producer is not selected),
    with the key each holds."""
    graph_handle = context.op_handle.parent
    if graph_handle is None:
        return {}
    graph = context.job_def.graph.get_node(graph_handle).definition
    if not isinstance(graph, GraphDefinition):
        return {}
    layer, found = context.job_def.asset_layer, {}
    for node in graph.nodes:
        for node_input in node.inputs():
            declared = node_input.input_def.dagster_type
            if graph.dependency_structure.has_deps(node_input) or not isinstance(declared, KeyType):
                continue
            asset = layer.get_asset_key_for_node_input(NodeHandle(node.name, graph_handle), node_input.input_name)
            if asset is not None:
                found[asset] = declared.context_key
    return found


def check_subset_upstream(context: OpExecutionContext, pipeline: str) -> None:
    """In a subset run, refuse to start when a value the subset loads was never materialized (for the run's
    partition): every step of the subset waits for the op that calls this, so no model is called first."""
    if not context.is_subset:
        return
    run = context.run
    partition = context.partition_key if context.has_partition_key else None
    before = materialized_before(context.instance, run)
    missing = [
        never_materialized(pipeline, key, asset, partition)
        for asset, key in sorted(_loaded_keys(context).items(), key=lambda item: item[0].to_user_string())
        if latest_materialization(context.instance, asset, partition, before=before) is None
    ]
    if missing:
        raise StorageError("\n".join(str(m) for m in missing))
