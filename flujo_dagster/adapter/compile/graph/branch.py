"""A Branch: a router op with one optional output per arm, each arm's ops, and a join forwarding the keys the
arms write from the arm that ran."""

from __future__ import annotations

from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer, arm_output, branch_join_op, router_op
from flujo_dagster.dsl.control import Branch
from flujo_dagster.dsl.flow import callable_reads, flow_of_steps
from flujo_dagster.names import DECISION_OUTPUT, DONE_OUTPUT, io_name, op_name

__all__ = ["expand_branch"]


def expand_branch(
    b: GraphState, branch: Branch, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> Producer | None:
    """Router `<branch>`, arm ops `<branch>__<step>`, join `<branch>__flujo_join`. Returns the join's
    `flujo_done` when an arm ends behind an approval gate (the rest of the sequence waits for it), else None."""
    reads = (branch.on,) if isinstance(branch.on, str) else callable_reads(branch.on)
    router = op_name(*prefix, branch.name)
    wiring = b.wiring(router, path, reads, (), gated=gate is not None)
    b.add(router, router_op(b.p, branch, wiring), {io_name(k): b.must(k, live, path) for k in reads}, gate)
    arms = branch.arms()
    written = b.ordered(frozenset().union(*(flow_of_steps(s, b.fields).may for _, s in arms)))
    arm_producers: list[dict[str, Producer | None]] = []
    tails: list[Producer] = []  # approval gates (or joins holding one) the arms end behind
    for index, (_, steps) in enumerate(arms):
        arm_live = dict(live)
        b.gates.enter(router)
        arm_gate = (router, arm_output(index))
        tail = b.steps(steps, arm_live, (*prefix, branch.name), path, arm_gate)
        b.gates.leave()
        if tail is not None and tail != arm_gate:
            tails.append(tail)
        arm_producers.append({k: b.resolve(k, arm_live) for k in written})
    join = op_name(*prefix, branch.name, "flujo_join")
    sources = b.g.frontier(
        [(router, DECISION_OUTPUT), *tails], [p for arm in arm_producers for p in arm.values() if p is not None]
    )
    labels = [label for label, _ in arms]
    wiring = b.wiring(join, path, (), written)
    op = branch_join_op(b.p, wiring, labels, arm_producers, step_key=b.step_key, done=bool(tails), watch=b.watch)
    b.add(join, op, {DECISION_OUTPUT: (router, DECISION_OUTPUT)}, None, sources)
    live.update({k: (join, io_name(k)) for k in written})
    return (join, DONE_OUTPUT) if tails else None
