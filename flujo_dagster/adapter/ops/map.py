"""Ops around a Map expanded with `inline=False`: the fan-out yields one `DynamicOutput` per element of the
`over` list (mapping keys `i0`, `i1`, ... in input order), the body's ops run once per element, and the collect
op gathers each element's `result` into the `into` list, in input order."""

from collections.abc import Iterator
from typing import Any

from dagster import DynamicOut, DynamicOutput, In, Nothing, OpDefinition, OpExecutionContext, Out, Output

from flujo_dagster import names
from flujo_dagster.adapter.ops.leaf import StepWiring, ins_for
from flujo_dagster.adapter.ops.park import ParkWatch
from flujo_dagster.adapter.storage.types import key_type
from flujo_dagster.dsl.control import Map
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.names import (
    AFTER_INPUT,
    DONE_OUTPUT,
    GATE_INPUT,
    IO_MANAGER_KEY,
    ITEM_OUTPUT,
    RESULTS_INPUT,
    io_name,
)

__all__ = ["ITEM_OUTPUT", "RESULTS_INPUT", "collect_op", "fanout_op", "mapped_gate_id", "mapping_key"]


def mapping_key(index: int) -> str:
    """The mapping key of element `index`: stable for the same input list, shown in step keys (`each__f[i3]`)."""
    return f"i{index}"


def mapped_gate_id(context: OpExecutionContext, node: str) -> str:
    """The id an approval gate's tags use (`flujo/decision/<id>`): its node name, and, in the body of a Map
    expanded with `inline=False`, the element's mapping key as Dagster's step key shows it (`each__review[i3]`),
    so that each element's gate is decided on its own."""
    key = context.get_mapping_key()
    return f"{node}[{key}]" if key is not None else node


def fanout_op(pipeline: Pipeline, node: Map, wiring: StepWiring) -> OpDefinition:
    """Yields each element of `over` as a `DynamicOutput` typed as the `item` key."""

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[DynamicOutput[Any]]:
        for index, element in enumerate(inputs[io_name(node.over)]):
            yield DynamicOutput(element, mapping_key=mapping_key(index), output_name=ITEM_OUTPUT)

    item_type = key_type(pipeline.name, node.item, pipeline.fields[node.item])
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=ins_for(pipeline, wiring.reads, gated=wiring.gated),
        outs={ITEM_OUTPUT: DynamicOut(item_type, io_manager_key=IO_MANAGER_KEY)},
        description=f"map {wiring.path}: one {node.item!r} per element of {node.over!r}",
        tags=names.op_tags(names.OpKind.FAN_OUT, wiring.path),
    )


def collect_op(
    pipeline: Pipeline,
    node: Map,
    wiring: StepWiring,
    after: int,
    *,
    done: bool = False,
    watch: ParkWatch | None = None,
) -> OpDefinition:
    """Gathers each element's `result` into `into` (input order); `after` Nothing inputs collect the body's
    other leaf outputs, so that every mapped op leads to the Map's output. With `done` (the body holds an
    approval gate) it also yields `flujo_done`, which the steps after the Map wait for, and takes the `after`
    fan-in that orders what they read from before it (see `adapter/compile/graph/gates.py`). With a `watch`, it
    holds while a gate before it is parked: Dagster would collect only the elements that produced."""
    into_type = key_type(pipeline.name, node.into, pipeline.fields[node.into])
    holds = watch is not None

    def compute(context: OpExecutionContext, inputs: dict[str, Any]) -> Iterator[Output[Any]]:
        if watch is not None and watch.holds(context, wiring.op, wiring.path):
            return
        yield Output(list(inputs[RESULTS_INPUT]), io_name(node.into))
        if done:
            yield Output(None, DONE_OUTPUT)

    # each element loads with the result key's own type (the producer's); the list is checked as `into`
    ins: dict[str, In] = {RESULTS_INPUT: In(list)}
    ins.update({f"after_{i}": In(Nothing) for i in range(after)})
    if wiring.gated:
        ins[GATE_INPUT] = In(Nothing)
    outs = {io_name(node.into): Out(into_type, io_manager_key=IO_MANAGER_KEY, is_required=not holds)}
    if done:
        ins[AFTER_INPUT] = In(Nothing)
        outs[DONE_OUTPUT] = Out(Nothing, is_required=not holds)
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        ins=ins,
        outs=outs,
        description=f"collects map {wiring.path}: each {node.result!r} into {node.into!r}, in input order",
        tags=names.op_tags(names.OpKind.COLLECT, wiring.path),
    )
