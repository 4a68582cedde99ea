"""A Parallel expanded (`inline=False`): each branch's ops side by side, and a barrier when branches hold gates."""

from __future__ import annotations

from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer, barrier_op
from flujo_dagster.dsl.control import Parallel
from flujo_dagster.dsl.flow import flow_of_steps
from flujo_dagster.names import DONE_OUTPUT, child_path, op_name

__all__ = ["expand_parallel"]


def expand_parallel(
    b: GraphState, par: Parallel, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> Producer | None:
    """Each branch's ops side by side, `<parallel>__<label>__<step>`. When branches hold approval gates, a barrier
    op `<parallel>__flujo_join` waits for each one's gate in force, and the steps after the Parallel wait for
    the barrier: gates in different branches park in the same run and are decided separately."""
    before = dict(live)
    tails: list[Producer] = []
    for label, steps in par.branches.items():
        branch_live = dict(before)
        tail = b.steps(steps, branch_live, (*prefix, par.name, label), child_path(path, label), gate)
        if tail is not None and tail != gate:
            tails.append(tail)
        for key in flow_of_steps(steps, b.fields).may:
            if key in branch_live:
                live[key] = branch_live[key]
    if not tails:
        return None
    join = op_name(*prefix, par.name, "flujo_join")
    wiring = b.wiring(join, path, (), (), gated=gate is not None)
    assert b.watch is not None  # a barrier stands only after branches holding approval gates
    b.add(join, barrier_op(b.p, wiring, b.watch), {}, gate, tails)
    return (join, DONE_OUTPUT)
