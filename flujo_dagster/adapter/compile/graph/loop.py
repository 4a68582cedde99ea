"""A Loop unrolled: the body's ops once per iteration, a gate op after each iteration deciding whether the next
runs, and a join forwarding the exiting iteration's keys."""

from __future__ import annotations

from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer, loop_join_op, until_op
from flujo_dagster.dsl.control import Loop
from flujo_dagster.dsl.flow import callable_reads, flow_of_steps
from flujo_dagster.names import CONTINUE_OUTPUT, DONE_OUTPUT, EXIT_OUTPUT, io_name, iteration_path, op_name

__all__ = ["expand_loop"]


def expand_loop(
    b: GraphState, loop: Loop, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> Producer | None:
    """Ops `<loop>__i<k>__<step>`, gates `<loop>__i<k>__flujo_until`, join `<loop>__flujo_join`. Returns the
    join's `flujo_done` when the body holds an approval gate, else None."""
    outer = gate  # the join waits for it: a fan-in alone would run it in a skipped region (see loop_join_op)
    written = b.ordered(flow_of_steps(loop.body, b.fields).may)
    reads = callable_reads(loop.until)
    exits: list[Producer] = []
    snapshots: list[dict[str, Producer | None]] = []
    depth = len(b.gates.stack)
    held = False  # the body holds an approval gate
    for i in range(1, loop.max_iterations + 1):
        here = (*prefix, loop.name, f"i{i}")
        tail = b.steps(loop.body, live, here, iteration_path(path, i), gate)
        if tail is not None and tail != gate:
            held, gate = True, tail  # the iteration's gate op waits for the approval
            b.gates.enter(tail[0])
        until = op_name(*here, "flujo_until")
        wiring = b.wiring(until, iteration_path(path, i), reads, (), gated=gate is not None)
        data = {io_name(k): b.must(k, live, path) for k in reads}
        b.add(until, until_op(b.p, loop, wiring, i, loop_path=path), data, gate)
        exits.append((until, EXIT_OUTPUT))
        snapshots.append({k: b.resolve(k, live) for k in written})
        gate = (until, CONTINUE_OUTPUT)
        b.gates.enter(until)  # iteration i + 1 and the ones after it
    b.gates.leave_to(depth)
    join = op_name(*prefix, loop.name, "flujo_join")
    wiring = b.wiring(join, path, (), written, gated=outer is not None)
    op = loop_join_op(b.p, wiring, exits, snapshots, step_key=b.step_key, done=held, watch=b.watch)
    sources = b.g.frontier(exits, [p for snap in snapshots for p in snap.values() if p is not None])
    b.add(join, op, {}, outer, sources)
    live.update({k: (join, io_name(k)) for k in written})
    return (join, DONE_OUTPUT) if held else None
