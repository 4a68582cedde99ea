"""A Map expanded (`inline=False`): a fan-out op, the body's ops mapped once per element, and a collect op."""

from __future__ import annotations

from flujo_dagster.adapter.compile.graph.built import Live, outputs
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer
from flujo_dagster.adapter.ops.map import collect_op, fanout_op
from flujo_dagster.dsl.control import Map
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import DONE_OUTPUT, ITEM_OUTPUT, RESULTS_INPUT, io_name, op_name

__all__ = ["expand_map"]


def expand_map(
    b: GraphState, node: Map, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> Producer | None:
    """Fan-out `<map>`, body ops `<map>__<step>` (one per element), collect `<map>__flujo_collect`. When the body
    holds an approval gate (one per element, decided by mapping key), the steps after the Map wait for the
    collect's `flujo_done`, which waits for every element's gate."""
    fan = op_name(*prefix, node.name)
    wiring = b.wiring(fan, path, (node.over,), (), gated=gate is not None)
    b.add(fan, fanout_op(b.p, node, wiring), {io_name(node.over): b.must(node.over, live, path)}, gate)
    b.gates.dynamic.add(fan)
    body_live = dict(live)
    body_live[node.item] = (fan, ITEM_OUTPUT)
    first = len(b.g.defs)
    b.in_fanout = True
    # the element as every body op's gate: each is mapped once per element (even one reading no key of the
    # element), and skipped with the fan-out
    tail = b.steps(node.body, body_live, (*prefix, node.name), path, (fan, ITEM_OUTPUT))
    b.in_fanout = False
    held = tail != (fan, ITEM_OUTPUT)
    body = list(b.g.defs)[first:]
    result = b.must(node.result, body_live, path)
    if result[0] not in (fan, *body):
        raise ConfigurationError(f"{path}: the body does not write {node.result!r}; validate the pipeline first")
    # every mapped output nobody in the body reads is collected too: Dagster wants each to lead somewhere
    consumed = {u for n in body for u in b.g.upstream[n]} | {result}
    leaves = [(n, out) for n in body for out in outputs(b.g.defs[n]) if (n, out) not in consumed]
    collect = op_name(*prefix, node.name, "flujo_collect")
    wiring = b.wiring(collect, path, (), (node.into,), gated=gate is not None)
    op = collect_op(b.p, node, wiring, len(leaves), done=held, watch=b.watch)
    collected = {RESULTS_INPUT: result, **{f"after_{i}": p for i, p in enumerate(leaves)}}
    b.add(collect, op, {}, gate, collected=collected)
    live[node.into] = (collect, io_name(node.into))
    return (collect, DONE_OUTPUT) if held else None
