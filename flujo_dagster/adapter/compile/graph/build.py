"""The whole pipeline as a graph: `flujo_inputs` first (with the pipeline's non-data deps as its Nothing inputs),
one `flujo_upstream_<key>` op per upstream key, every step expanded, `flujo_context` last."""

from __future__ import annotations

from collections.abc import Callable

from dagster import DependencyDefinition, In, InputMapping, MultiDependencyDefinition, Nothing, OpDefinition

from flujo_dagster.adapter.compile.graph.built import INPUT, BuiltGraph, Live, outputs
from flujo_dagster.adapter.compile.graph.sequence import expand_steps
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import context_op
from flujo_dagster.adapter.ops.leaf import inputs_op
from flujo_dagster.adapter.ops.upstream import upstream_op_def
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import (
    AFTER_INPUT,
    CONTEXT_OP,
    INPUTS_OP,
    READY_OUTPUT,
    UPSTREAM_INPUT,
    deps_input,
    io_name,
    op_name,
    upstream_op,
)

__all__ = ["build_graph"]


def build_graph(pipeline: Pipeline, step_key: Callable[[str], str]) -> BuiltGraph:
    """Expand `pipeline` (validated) into nodes and dependencies."""
    b = GraphState(pipeline, step_key, expand_steps)
    live: Live = dict.fromkeys(pipeline.initial_keys(), INPUT)
    live.update(_upstream_ops(b, pipeline))
    b.steps(pipeline.steps, live, (), pipeline.name, None)
    final = {k: b.must(k, live, pipeline.name) for k in live}
    emitted = tuple(k for k in pipeline.initial_keys() if k in b.emitted)
    ready = (INPUTS_OP, io_name(emitted[0]) if emitted else READY_OUTPUT)
    _after_inputs(b.g, ready)
    _asset_readers_after_inputs(b.g, ready, {final[k] for k in pipeline.assets})
    first = _with_deps(b.g, pipeline, inputs_op(pipeline, op_name(pipeline.name, INPUTS_OP), emitted))
    b.g.defs = {INPUTS_OP: first, **b.g.defs}
    b.g.deps[INPUTS_OP] = {}
    op = context_op(pipeline, op_name(pipeline.name, CONTEXT_OP), final, step_key=step_key, watch=b.watch)
    # Ordering needs only the outputs nobody reads; depending on each of them also ties every output to
    # the final_context asset or the check after it (Dagster refuses asset-graph outputs that lead to no asset
    # or check).
    consumed = {u for sources in b.g.upstream.values() for u in sources}
    unread = [(node, out) for node, d in b.g.defs.items() for out in outputs(d) if (node, out) not in consumed]
    b.add(CONTEXT_OP, op, {}, None, [ready, *unread])
    b.g.upstream[CONTEXT_OP] = [ready, *final.values()]  # lineage: the context holds every key
    b.gates.wire(b.g, b.fan_in)
    b.g.live = final
    if b.watch is not None:
        b.watch.gates_before.update(b.g.gates_before(b.approvals))
    return b.g


def _upstream_ops(b: GraphState, pipeline: Pipeline) -> Live:
    """One op per upstream key, whose input is a graph input mapped (by the compiler) to the key's asset; the
    op's output holds the key from the start of the run. It reads nothing else, so it waits for `flujo_inputs`."""
    live: Live = {}
    for key, path in pipeline.upstream.items():
        node = upstream_op(key)
        b.add(node, upstream_op_def(pipeline, key, op_name(pipeline.name, node)), {}, None)
        b.g.input_mappings.append(
            InputMapping(graph_input_name=node, mapped_node_name=node, mapped_node_input_name=UPSTREAM_INPUT)
        )
        b.g.input_assets[node] = path
        live[key] = (node, io_name(key))
    return live


def _with_deps(g: BuiltGraph, pipeline: Pipeline, first: OpDefinition) -> OpDefinition:
    """`flujo_inputs` with one Nothing input per non-data dep, each mapped from a graph input (the compiler maps
    it to the dep's asset key): the asset graph shows the edge, and nothing runs before the inputs op."""
    if not pipeline.deps:
        return first
    ins = dict(first.ins)
    for index, path in enumerate(pipeline.deps):
        name = deps_input(index)
        ins[name] = In(Nothing)
        g.input_mappings.append(
            InputMapping(graph_input_name=name, mapped_node_name=INPUTS_OP, mapped_node_input_name=name)
        )
        g.input_assets[name] = path
    return first.with_replaced_properties(name=first.name, ins=ins)


def _asset_readers_after_inputs(g: BuiltGraph, ready: tuple[str, str], assets: set[tuple[str, str]]) -> None:
    """Make every op that reads an asset's value wait for `flujo_inputs` too. In a full run it waits anyway
    (through the asset's producer); in a run of a subset of the assets, where that value is loaded instead, it
    keeps `flujo_inputs` in the subset and first, so the subset's upstream values are checked before any step."""
    for node, deps in g.deps.items():
        definition = g.defs[node]
        reads = {(d.node, d.output) for dep in deps.values() for d in dep.get_node_dependencies()}
        if node == INPUTS_OP or not reads & assets or not isinstance(definition, OpDefinition):
            continue
        after = deps.get(AFTER_INPUT)
        if after is None:
            g.defs[node] = definition.with_replaced_properties(
                name=definition.name, ins={**definition.ins, AFTER_INPUT: In(Nothing)}
            )
            deps[AFTER_INPUT] = MultiDependencyDefinition([DependencyDefinition(*ready)])
        elif isinstance(after, MultiDependencyDefinition) and ready not in reads:
            deps[AFTER_INPUT] = MultiDependencyDefinition(
                [*after.get_node_dependencies(), DependencyDefinition(*ready)]
            )


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
