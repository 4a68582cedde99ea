"""The whole pipeline as a graph: `flujo_inputs` first, every step expanded, `flujo_context` last."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DependencyDefinition, In, MultiDependencyDefinition, Nothing, OpDefinition

from flujo_dagster.adapter.compile.graph.built import INPUT, BuiltGraph, Live, outputs
from flujo_dagster.adapter.compile.graph.sequence import expand_steps
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import context_op
from flujo_dagster.adapter.ops.leaf import inputs_op
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import AFTER_INPUT, CONTEXT_OP, INPUTS_OP, READY_OUTPUT, io_name, op_name

__all__ = ["build_graph"]


def build_graph(pipeline: Pipeline, step_key: Callable[[str], str]) -> BuiltGraph:
    """Expand `pipeline` (validated) into nodes and dependencies."""
    b = GraphState(pipeline, step_key, expand_steps)
    live: Live = dict.fromkeys(pipeline.initial_keys(), INPUT)
    b.steps(pipeline.steps, live, (), pipeline.name, None)
    final = {k: b.must(k, live, pipeline.name) for k in live}
    emitted = tuple(k for k in pipeline.initial_keys() if k in b.emitted)
    ready = (INPUTS_OP, io_name(emitted[0]) if emitted else READY_OUTPUT)
    _after_inputs(b.g, ready)
    b.g.defs = {INPUTS_OP: inputs_op(pipeline, op_name(pipeline.name, INPUTS_OP), emitted), **b.g.defs}
    b.g.deps[INPUTS_OP] = {}
    op = context_op(pipeline, op_name(pipeline.name, CONTEXT_OP), final, step_key=step_key, watch=b.watch)
    # Ordering needs only the outputs nobody reads; depending on each of them also ties every output to
    # the final_context asset (Dagster refuses asset-graph outputs that lead to no asset).
    consumed = {u for sources in b.g.upstream.values() for u in sources}
    unread = [(node, out) for node, d in b.g.defs.items() for out in outputs(d) if (node, out) not in consumed]
    b.add(CONTEXT_OP, op, {}, None, [ready, *unread])
    b.g.upstream[CONTEXT_OP] = [ready, *final.values()]  # lineage: the context holds every key
    b.gates.wire(b.g, b.fan_in)
    b.g.live = final
    if b.watch is not None:
        b.watch.gates_before.update(b.g.gates_before(b.approvals))
    return b.g


def _after_inputs(g: BuiltGraph, ready: tuple[str, str]) -> None:
    """Make every op that reads nothing wait for `flujo_inputs`, so bad run inputs fail the run before any
    step runs (an op that reads no initial key would otherwise start beside it, or before it)."""
    for node, deps in g.deps.items():
        if deps:
            continue
        definition = g.defs[node]
        if not isinstance(definition, OpDefinition):
            raise ConfigurationError(f"node {node!r} reads nothing and is not an op; it cannot wait for the inputs")
        g.defs[node] = definition.with_replaced_properties(
            name=definition.name, ins={**definition.ins, AFTER_INPUT: In(Nothing)}
        )
        g.deps[node] = {AFTER_INPUT: MultiDependencyDefinition([DependencyDefinition(*ready)])}
