"""Approval gates: a plain gate (one op whose `flujo_approved` output the rest of the sequence waits for), and a
gate with `on_reject` steps, which routes the rest of its sequence like a branch."""

from __future__ import annotations

from collections.abc import Sequence

from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.approval import VERDICT_LABELS, approval_op
from flujo_dagster.adapter.ops.flow import Producer, branch_join_op
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.flow import flow_of_steps
from flujo_dagster.dsl.steps import Step
from flujo_dagster.names import APPROVED_OUTPUT, DECISION_OUTPUT, DONE_OUTPUT, REJECTED_OUTPUT, io_name, op_name

__all__ = ["expand_approval", "expand_rejectable"]


def expand_approval(
    b: GraphState, step: Approval, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> str:
    """The gate op `<prefix>__<gate>`, reading the keys it shows and its run state, re-writing the shown keys;
    returns its node name."""
    node = op_name(*prefix, step.name)
    reads = b.gate_reads(step)
    wiring = b.wiring(node, path, reads, step.show, split=True, gated=gate is not None)
    data = {io_name(k): b.must(k, live, path) for k in reads}
    b.add(node, approval_op(b.p, step, wiring), data, gate)
    b.state_only(node, list(data.values()), [data[io_name(k)] for k in step.show])
    b.approvals.add(node)
    live.update({k: (node, io_name(k)) for k in step.show})
    return node


def expand_rejectable(
    b: GraphState,
    step: Approval,
    rest: Sequence[Step],
    live: Live,
    prefix: tuple[str, ...],
    here: str,
    path: str,
    gate: Producer | None,
) -> Producer:
    """A gate with `on_reject` steps routes like a branch: approved, the rest of its sequence runs (reading the
    approved values); rejected, the `on_reject` steps run instead (ops `<gate>__<step>`, reading the shown
    keys' values from before the gate). A join after both forwards every key either writes. Returns the
    join's `flujo_done`, the gate in force at the end of the sequence."""
    node = op_name(*prefix, step.name)
    reads = b.gate_reads(step)
    wiring = b.wiring(node, here, reads, step.show, split=True, gated=gate is not None)
    data = {io_name(k): b.must(k, live, here) for k in reads}
    b.add(node, approval_op(b.p, step, wiring), data, gate)
    b.state_only(node, list(data.values()), [data[io_name(k)] for k in step.show])
    b.approvals.add(node)
    may = flow_of_steps(rest, b.fields).may | flow_of_steps(step.on_reject, b.fields).may
    written = b.ordered(may | frozenset(step.show))
    approved = {**live, **{k: (node, io_name(k)) for k in step.show}}
    arms = [
        (rest, approved, (node, APPROVED_OUTPUT), prefix, path),
        (step.on_reject, dict(live), (node, REJECTED_OUTPUT), (*prefix, step.name), here),
    ]
    producers: list[dict[str, Producer | None]] = []
    tails: list[Producer] = []
    for steps, arm_live, arm_gate, arm_prefix, arm_path in arms:
        b.gates.enter(node)
        tail = b.steps(steps, arm_live, arm_prefix, arm_path, arm_gate)
        b.gates.leave()
        if tail is not None and tail != arm_gate:
            tails.append(tail)
        producers.append({k: b.resolve(k, arm_live) for k in written})
    join = op_name(*prefix, step.name, "flujo_join")
    sources = b.g.frontier(
        [(node, DECISION_OUTPUT), *tails], [p for arm in producers for p in arm.values() if p is not None]
    )
    wiring = b.wiring(join, here, (), written)
    op = branch_join_op(b.p, wiring, list(VERDICT_LABELS), producers, step_key=b.step_key, done=True, watch=b.watch)
    b.add(join, op, {DECISION_OUTPUT: (node, DECISION_OUTPUT)}, None, sources)
    live.update({k: (join, io_name(k)) for k in written})
    return (join, DONE_OUTPUT)
