"""The dispatcher: a sequence of steps expanded node by node, each by the rule of its kind."""

from __future__ import annotations

from collections.abc import Sequence

from flujo_dagster.adapter.compile.graph.approval import expand_approval, expand_rejectable
from flujo_dagster.adapter.compile.graph.branch import expand_branch
from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.inline import expand_inline
from flujo_dagster.adapter.compile.graph.leaf import expand_leaf
from flujo_dagster.adapter.compile.graph.loop import expand_loop
from flujo_dagster.adapter.compile.graph.map import expand_map
from flujo_dagster.adapter.compile.graph.parallel import expand_parallel
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel, runs_in_one_op
from flujo_dagster.dsl.steps import Step
from flujo_dagster.names import APPROVED_OUTPUT, step_path

__all__ = ["expand_steps"]


def expand_steps(
    b: GraphState, steps: Sequence[Step], live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> Producer | None:
    """Expand a sequence. Returns the gate in force at its end: after an approval gate (or the join of a
    construct holding one) every later step of the sequence waits for it, as a region of that op."""
    depth = len(b.gates.stack)
    for index, step in enumerate(steps):
        here = step_path(path, step.kind, step.name)
        b.owning.append((step, runs_in_one_op(step, in_fanout=b.in_fanout)))  # the ops it adds are its own
        if isinstance(step, Approval) and step.on_reject:  # routes the rest of the sequence: it ends here
            gate = expand_rejectable(b, step, steps[index + 1 :], live, prefix, here, path, gate)
            b.owning.pop()
            break
        after = _expand_node(b, step, live, prefix, here, path, gate)
        b.owning.pop()
        if after is not None:
            gate = after
            b.gates.enter(after[0])
    b.gates.leave_to(depth)
    return gate


def _expand_node(
    b: GraphState, step: Step, live: Live, prefix: tuple[str, ...], here: str, path: str, gate: Producer | None
) -> Producer | None:
    """Expand one node (not a gate with `on_reject` steps); returns the gate the rest of its sequence waits
    for, when it holds an approval gate."""
    if runs_in_one_op(step, in_fanout=b.in_fanout):
        expand_inline(b, step, live, prefix, here, path, gate)
    elif isinstance(step, Approval):
        return (expand_approval(b, step, live, prefix, here, gate), APPROVED_OUTPUT)
    elif isinstance(step, Map):
        return expand_map(b, step, live, prefix, here, gate)
    elif isinstance(step, Loop):
        return expand_loop(b, step, live, prefix, here, gate)
    elif isinstance(step, Branch):
        return expand_branch(b, step, live, prefix, here, gate)
    elif isinstance(step, Parallel):
        return expand_parallel(b, step, live, prefix, here, gate)
    elif isinstance(step, Group):
        tail = expand_steps(b, step.steps, live, (*prefix, step.name), here, gate)
        return tail if tail != gate else None
    else:
        expand_leaf(b, step, live, prefix, here, gate)
    return None
