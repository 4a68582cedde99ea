"""A node that runs in one op (`inline=True`, or control flow in the body of an expanded Map): the whole subtree
runs in the in-process interpreter."""

from __future__ import annotations

from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer, inline_op
from flujo_dagster.dsl.flow import flow_of
from flujo_dagster.dsl.steps import Step
from flujo_dagster.names import BUNDLE_OUTPUT, io_name, op_name

__all__ = ["expand_inline"]


def expand_inline(
    b: GraphState, step: Step, live: Live, prefix: tuple[str, ...], path: str, parent: str, gate: Producer | None
) -> None:
    """Op `<prefix>__<node>` reading what the subtree reads and writing every key it may write."""
    flow = flow_of(step, b.fields)
    node = op_name(*prefix, step.name)
    writes = b.ordered(flow.may)
    # a key written on some paths only keeps its value from before the node on the others (as an expanded
    # join forwards it): the op reads it too, so that it can pass it on
    carried = tuple(k for k in writes if k not in flow.must and k not in flow.reads and k in live)
    reads = (*flow.reads, *carried)
    optional = flow.may - flow.must - frozenset(carried)
    wiring = b.wiring(node, path, reads, writes, gated=gate is not None, optional=optional)
    data = {io_name(k): b.must(k, live, path) for k in reads}
    fused = _fused(b, writes, optional)
    b.add(node, inline_op(b.p, step, wiring, parent, fused=fused), data, gate)
    live.update({k: (node, BUNDLE_OUTPUT if k in fused else io_name(k)) for k in writes})


def _fused(b: GraphState, writes: tuple[str, ...], optional: frozenset[str]) -> tuple[str, ...]:
    """The keys the op writes through its one bundle output: those written on every path that are no assets
    (an asset keeps its own output, for its materialization). None in the body of an expanded Map (its outputs
    are per element) or when a key's output name is the bundle's."""
    if b.in_fanout or BUNDLE_OUTPUT in map(io_name, writes):
        return ()
    return tuple(k for k in writes if k not in optional and k not in b.p.assets)
