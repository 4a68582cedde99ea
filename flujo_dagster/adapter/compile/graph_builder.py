"""Expanding a pipeline's DSL tree into ops and dependencies: one rule per node kind, keys wired to the op
holding their live value, routers/gates and joins around branches and loops, inline groups as one op."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from dagster import DependencyDefinition, GraphDefinition, MultiDependencyDefinition, NodeInvocation, OpDefinition

# What `.collect()` in a `@graph` function compiles to; dagster 1.13 does not export it (pinned by
# tests/test_map.py). Building the graph from dependency dicts keeps step keys and names flat and ours.
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition

from flujo_dagster.adapter.ops.approval import VERDICT_LABELS, approval_op
from flujo_dagster.adapter.ops.flow import (
    Producer,
    arm_output,
    barrier_op,
    branch_join_op,
    context_op,
    inline_op,
    loop_join_op,
    router_op,
    until_op,
)
from flujo_dagster.adapter.ops.leaf import StepWiring, inputs_op, step_op
from flujo_dagster.adapter.ops.map import collect_op, fanout_op
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.control import Branch, Group, Loop, Map, Parallel, runs_in_one_op
from flujo_dagster.dsl.flow import callable_reads, flow_of, flow_of_steps
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import Step
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import (
    AFTER_INPUT,
    APPROVED_OUTPUT,
    CONTEXT_OP,
    CONTINUE_OUTPUT,
    DECISION_OUTPUT,
    DONE_OUTPUT,
    EXIT_OUTPUT,
    GATE_INPUT,
    INPUTS_OP,
    ITEM_OUTPUT,
    READY_OUTPUT,
    REJECTED_OUTPUT,
    RESULTS_INPUT,
    child_path,
    io_name,
    iteration_path,
    op_name,
    step_path,
)

__all__ = ["BuiltGraph", "build_graph"]

_INPUT: Producer = ("", "")  # marker: the key's value comes from flujo_inputs (emitted only when needed)
Live = dict[str, Producer]
Dep = DependencyDefinition | MultiDependencyDefinition | DynamicCollectDependencyDefinition


class BuiltGraph:
    """Nodes, dependencies, the final producer of each key, and data lineage between nodes."""

    def __init__(self) -> None:
        self.defs: dict[str, OpDefinition | GraphDefinition] = {}
        self.deps: dict[str, dict[str, Dep]] = {}
        self.upstream: dict[str, list[Producer]] = {}
        self.live: Live = {}

    def dependencies(self) -> dict[NodeInvocation, dict[str, Dep]]:
        """Dependencies keyed by invocation: node names alias the pipeline-prefixed op definitions."""
        return {NodeInvocation(d.name, alias=node): self.deps.get(node, {}) for node, d in self.defs.items()}


class _Builder:
    def __init__(self, pipeline: Pipeline, step_key: Callable[[str], str]) -> None:
        self.p = pipeline
        self.fields = pipeline.fields
        self.step_key = step_key
        self.g = BuiltGraph()
        self.emitted: set[str] = set()
        # Gated regions: the router or loop gate whose optional output decides whether the region's ops run or
        # are skipped, innermost last; and each node's enclosing regions when it was added.
        self.regions: list[str] = []
        self.regions_of: dict[str, tuple[str, ...]] = {}
        self.before_gate: dict[str, dict[Producer, None]] = {}
        self.fan_in: dict[str, list[Producer]] = {}
        self.in_fanout = False  # inside the body of a Map expanded with inline=False
        self.dynamic: set[str] = set()  # nodes whose outputs are per element: fan-outs and the ops they map

    # -- wiring helpers -----------------------------------------------------------------------------------
    def resolve(self, key: str, live: Live) -> Producer | None:
        producer = live.get(key)
        if producer == _INPUT:
            self.emitted.add(key)
            return (INPUTS_OP, io_name(key))
        return producer

    def must(self, key: str, live: Live, path: str) -> Producer:
        producer = self.resolve(key, live)
        if producer is None:
            raise ConfigurationError(f"{path}: key {key!r} has no value here; validate the pipeline first")
        return producer

    def add(
        self,
        node: str,
        definition: OpDefinition | GraphDefinition,
        data: Mapping[str, Producer],
        gate: Producer | None,
        fan_in: Sequence[Producer] = (),
        collected: Mapping[str, Producer] | None = None,
    ) -> None:
        if node in self.g.defs:
            raise ConfigurationError(f"two ops would be named {node!r}; rename one of the steps")
        deps: dict[str, Dep] = {name: DependencyDefinition(*p) for name, p in data.items()}
        if gate is not None:
            deps[GATE_INPUT] = DependencyDefinition(*gate)
        if fan_in:
            self.fan_in[node] = list(dict.fromkeys(fan_in))
            deps[AFTER_INPUT] = MultiDependencyDefinition([DependencyDefinition(*p) for p in self.fan_in[node]])
        collected = collected or {}
        deps.update({name: DynamicCollectDependencyDefinition(*p) for name, p in collected.items()})
        self.g.defs[node] = definition
        self.g.deps[node] = deps
        if self.in_fanout:
            self.dynamic.add(node)
        self.g.upstream[node] = [
            *data.values(),
            *fan_in,
            *collected.values(),
            *([gate] if gate is not None else []),
        ]
        self.regions_of[node] = tuple(self.regions)
        for producer in self.g.upstream[node]:
            self.order_before_gates(producer, node)

    def order_before_gates(self, producer: Producer, node: str) -> None:
        """Make `producer` run before the gate of every region holding `node` but not `producer`.

        Dagster 1.13's in-process executor spins forever when abandoning a step (downstream of a failure) makes
        a gated step skippable and nothing is left to run: it handles skips, then abandons, never skips again.
        With every outside producer ahead of the gate, a region's ops resolve when the gate does: all skipped
        (the gate went the other way) or all abandoned (something before it failed).

        Per-element outputs cannot feed a fan-in (Dagster refuses it) and need no such ordering: the only gates
        in a mapped body are approvals, and one element's ops run or are abandoned together."""
        source = producer[0]
        if source in self.dynamic:
            return
        for gate in self.regions_of[node]:
            if source != gate and gate not in self.regions_of.get(source, ()):
                self.before_gate.setdefault(gate, {})[producer] = None

    def region(self, gate: str) -> None:
        """Enter the region that `gate`'s optional output decides (a branch arm, later loop iterations)."""
        self.regions.append(gate)

    def frontier(self, keep: Sequence[Producer], candidates: Sequence[Producer]) -> list[Producer]:
        """The fan-in sources an op needs for ordering: `keep` (always), and the candidates that no other
        candidate reads (in a chain, only the last): the others come before those anyway."""
        consumed = {u for p in candidates for u in self.g.upstream.get(p[0], ())}
        return list(dict.fromkeys([*keep, *(p for p in candidates if p not in consumed)]))

    def wiring(self, node: str, path: str, reads: Sequence[str], writes: Sequence[str], **extra: object) -> StepWiring:
        return StepWiring(
            op=node,
            definition=op_name(self.p.name, node),
            path=path,
            reads=tuple(reads),
            writes=tuple(writes),
            **extra,  # type: ignore[arg-type]
        )

    def ordered(self, keys: frozenset[str]) -> tuple[str, ...]:
        return tuple(k for k in self.fields if k in keys)

    # -- one rule per node kind ---------------------------------------------------------------------------
    def steps(
        self, steps: Sequence[Step], live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
    ) -> Producer | None:
        """Expand a sequence. Returns the gate in force at its end: after an approval gate (or the join of a
        construct holding one) every later step of the sequence waits for it, as a region of that op."""
        depth = len(self.regions)
        for index, step in enumerate(steps):
            here = step_path(path, step.kind, step.name)
            after: Producer | None = None
            if runs_in_one_op(step, in_fanout=self.in_fanout):
                self.inline(step, live, prefix, here, path, gate)
            elif isinstance(step, Approval) and step.on_reject:  # routes the rest of the sequence: it ends here
                gate = self.rejectable(step, steps[index + 1 :], live, prefix, here, path, gate)
                break
            elif isinstance(step, Approval):
                after = (self.approval(step, live, prefix, here, gate), APPROVED_OUTPUT)
            elif isinstance(step, Map):
                after = self.fanout(step, live, prefix, here, gate)
            elif isinstance(step, Loop):
                after = self.loop(step, live, prefix, here, gate)
            elif isinstance(step, Branch):
                after = self.branch(step, live, prefix, here, gate)
            elif isinstance(step, Parallel):
                after = self.parallel(step, live, prefix, here, gate)
            elif isinstance(step, Group):
                tail = self.steps(step.steps, live, (*prefix, step.name), here, gate)
                after = tail if tail != gate else None
            else:
                self.leaf(step, live, prefix, here, gate)
            if after is not None:
                gate = after
                self.region(after[0])
        del self.regions[depth:]
        return gate

    def approval(self, step: Approval, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None) -> str:
        node = op_name(*prefix, step.name)
        wiring = self.wiring(node, path, step.show, step.show, split=True, gated=gate is not None)
        data = {io_name(k): self.must(k, live, path) for k in step.show}
        self.add(node, approval_op(self.p, step, wiring), data, gate)
        live.update({k: (node, io_name(k)) for k in step.show})
        return node

    def rejectable(
        self,
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
        wiring = self.wiring(node, here, step.show, step.show, split=True, gated=gate is not None)
        self.add(
            node, approval_op(self.p, step, wiring), {io_name(k): self.must(k, live, here) for k in step.show}, gate
        )
        may = flow_of_steps(rest, self.fields).may | flow_of_steps(step.on_reject, self.fields).may
        written = self.ordered(may | frozenset(step.show))
        approved = {**live, **{k: (node, io_name(k)) for k in step.show}}
        arms = [
            (rest, approved, (node, APPROVED_OUTPUT), prefix, path),
            (step.on_reject, dict(live), (node, REJECTED_OUTPUT), (*prefix, step.name), here),
        ]
        producers: list[dict[str, Producer | None]] = []
        tails: list[Producer] = []
        for steps, arm_live, arm_gate, arm_prefix, arm_path in arms:
            self.region(node)
            tail = self.steps(steps, arm_live, arm_prefix, arm_path, arm_gate)
            self.regions.pop()
            if tail is not None and tail != arm_gate:
                tails.append(tail)
            producers.append({k: self.resolve(k, arm_live) for k in written})
        join = op_name(*prefix, step.name, "flujo_join")
        sources = self.frontier(
            [(node, DECISION_OUTPUT), *tails], [p for arm in producers for p in arm.values() if p is not None]
        )
        op = branch_join_op(
            self.p,
            self.wiring(join, here, (), written),
            list(VERDICT_LABELS),
            producers,
            step_key=self.step_key,
            done=True,
        )
        self.add(join, op, {DECISION_OUTPUT: (node, DECISION_OUTPUT)}, None, sources)
        live.update({k: (join, io_name(k)) for k in written})
        return (join, DONE_OUTPUT)

    def leaf(self, step: Step, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None) -> None:
        keys = self.p.keys_of(step)
        if keys.writes is None:
            raise ConfigurationError(f"{path}: writes no known key; validate the pipeline first")
        node = op_name(*prefix, step.name)
        wiring = self.wiring(node, path, keys.reads, keys.writes, split=keys.split, gated=gate is not None)
        data = {io_name(k): self.must(k, live, path) for k in keys.reads}
        self.add(node, step_op(self.p, step, wiring), data, gate)
        live.update({k: (node, io_name(k)) for k in keys.writes})

    def inline(
        self, step: Step, live: Live, prefix: tuple[str, ...], path: str, parent: str, gate: Producer | None
    ) -> None:
        flow = flow_of(step, self.fields)
        node = op_name(*prefix, step.name)
        writes = self.ordered(flow.may)
        # a key written on some paths only keeps its value from before the node on the others (as an expanded
        # join forwards it): the op reads it too, so that it can pass it on
        carried = tuple(k for k in writes if k not in flow.must and k not in flow.reads and k in live)
        reads = (*flow.reads, *carried)
        optional = flow.may - flow.must - frozenset(carried)
        wiring = self.wiring(node, path, reads, writes, gated=gate is not None, optional=optional)
        data = {io_name(k): self.must(k, live, path) for k in reads}
        self.add(node, inline_op(self.p, step, wiring, parent), data, gate)
        live.update({k: (node, io_name(k)) for k in writes})

    def branch(
        self, branch: Branch, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
    ) -> Producer | None:
        reads = (branch.on,) if isinstance(branch.on, str) else callable_reads(branch.on)
        router = op_name(*prefix, branch.name)
        wiring = self.wiring(router, path, reads, (), gated=gate is not None)
        self.add(router, router_op(self.p, branch, wiring), {io_name(k): self.must(k, live, path) for k in reads}, gate)
        arms = branch.arms()
        written = self.ordered(frozenset().union(*(flow_of_steps(s, self.fields).may for _, s in arms)))
        arm_producers: list[dict[str, Producer | None]] = []
        tails: list[Producer] = []  # approval gates (or joins holding one) the arms end behind
        for index, (_, steps) in enumerate(arms):
            arm_live = dict(live)
            self.region(router)
            arm_gate = (router, arm_output(index))
            tail = self.steps(steps, arm_live, (*prefix, branch.name), path, arm_gate)
            self.regions.pop()
            if tail is not None and tail != arm_gate:
                tails.append(tail)
            arm_producers.append({k: self.resolve(k, arm_live) for k in written})
        join = op_name(*prefix, branch.name, "flujo_join")
        sources = self.frontier(
            [(router, DECISION_OUTPUT), *tails], [p for arm in arm_producers for p in arm.values() if p is not None]
        )
        op = branch_join_op(
            self.p,
            self.wiring(join, path, (), written),
            [label for label, _ in arms],
            arm_producers,
            step_key=self.step_key,
            done=bool(tails),
        )
        self.add(join, op, {DECISION_OUTPUT: (router, DECISION_OUTPUT)}, None, sources)
        live.update({k: (join, io_name(k)) for k in written})
        return (join, DONE_OUTPUT) if tails else None

    def loop(
        self, loop: Loop, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
    ) -> Producer | None:
        outer = gate  # the join waits for it: a fan-in alone would run it in a skipped region (see loop_join_op)
        written = self.ordered(flow_of_steps(loop.body, self.fields).may)
        reads = callable_reads(loop.until)
        exits: list[Producer] = []
        snapshots: list[dict[str, Producer | None]] = []
        depth = len(self.regions)
        held = False  # the body holds an approval gate
        for i in range(1, loop.max_iterations + 1):
            here = (*prefix, loop.name, f"i{i}")
            tail = self.steps(loop.body, live, here, iteration_path(path, i), gate)
            if tail is not None and tail != gate:
                held, gate = True, tail  # the iteration's gate op waits for the approval
                self.region(tail[0])
            until = op_name(*here, "flujo_until")
            wiring = self.wiring(until, iteration_path(path, i), reads, (), gated=gate is not None)
            data = {io_name(k): self.must(k, live, path) for k in reads}
            self.add(until, until_op(self.p, loop, wiring, i, loop_path=path), data, gate)
            exits.append((until, EXIT_OUTPUT))
            snapshots.append({k: self.resolve(k, live) for k in written})
            gate = (until, CONTINUE_OUTPUT)
            self.region(until)  # iteration i + 1 and the ones after it
        del self.regions[depth:]
        join = op_name(*prefix, loop.name, "flujo_join")
        wiring = self.wiring(join, path, (), written, gated=outer is not None)
        op = loop_join_op(self.p, wiring, exits, snapshots, step_key=self.step_key, done=held)
        sources = self.frontier(exits, [p for snap in snapshots for p in snap.values() if p is not None])
        self.add(join, op, {}, outer, sources)
        live.update({k: (join, io_name(k)) for k in written})
        return (join, DONE_OUTPUT) if held else None

    def fanout(
        self, node: Map, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
    ) -> Producer | None:
        """A fan-out op, the body's ops mapped once per element, a collect op. When the body holds an approval
        gate (one per element, decided by mapping key), the steps after the Map wait for the collect's
        `flujo_done`, which waits for every element's gate."""
        fan = op_name(*prefix, node.name)
        wiring = self.wiring(fan, path, (node.over,), (), gated=gate is not None)
        self.add(fan, fanout_op(self.p, node, wiring), {io_name(node.over): self.must(node.over, live, path)}, gate)
        self.dynamic.add(fan)
        body_live = dict(live)
        body_live[node.item] = (fan, ITEM_OUTPUT)
        first = len(self.g.defs)
        self.in_fanout = True
        # the element as every body op's gate: each is mapped once per element (even one reading no key of the
        # element), and skipped with the fan-out
        tail = self.steps(node.body, body_live, (*prefix, node.name), path, (fan, ITEM_OUTPUT))
        self.in_fanout = False
        held = tail != (fan, ITEM_OUTPUT)
        body = list(self.g.defs)[first:]
        result = self.must(node.result, body_live, path)
        if result[0] not in (fan, *body):
            raise ConfigurationError(f"{path}: the body does not write {node.result!r}; validate the pipeline first")
        # every mapped output nobody in the body reads is collected too: Dagster wants each to lead somewhere
        consumed = {u for n in body for u in self.g.upstream[n]} | {result}
        leaves = [(n, out) for n in body for out in _outputs(self.g.defs[n]) if (n, out) not in consumed]
        collect = op_name(*prefix, node.name, "flujo_collect")
        wiring = self.wiring(collect, path, (), (node.into,), gated=gate is not None)
        op = collect_op(self.p, node, wiring, len(leaves), done=held)
        collected = {RESULTS_INPUT: result, **{f"after_{i}": p for i, p in enumerate(leaves)}}
        self.add(collect, op, {}, gate, collected=collected)
        live[node.into] = (collect, io_name(node.into))
        return (collect, DONE_OUTPUT) if held else None

    def parallel(
        self, par: Parallel, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
    ) -> Producer | None:
        """Each branch's ops side by side. When branches hold approval gates, a barrier op
        `<parallel>__flujo_join` waits for each one's gate in force, and the steps after the Parallel wait for
        the barrier: gates in different branches park in the same run and are decided separately."""
        before = dict(live)
        tails: list[Producer] = []
        for label, steps in par.branches.items():
            branch_live = dict(before)
            tail = self.steps(steps, branch_live, (*prefix, par.name, label), child_path(path, label), gate)
            if tail is not None and tail != gate:
                tails.append(tail)
            for key in flow_of_steps(steps, self.fields).may:
                if key in branch_live:
                    live[key] = branch_live[key]
        if not tails:
            return None
        join = op_name(*prefix, par.name, "flujo_join")
        wiring = self.wiring(join, path, (), (), gated=gate is not None)
        self.add(join, barrier_op(self.p, wiring), {}, gate, tails)
        return (join, DONE_OUTPUT)

    # -- the whole pipeline -------------------------------------------------------------------------------
    def build(self) -> BuiltGraph:
        live: Live = dict.fromkeys(self.p.initial_keys(), _INPUT)
        self.steps(self.p.steps, live, (), self.p.name, None)
        final = {k: self.must(k, live, self.p.name) for k in live}
        emitted = tuple(k for k in self.p.initial_keys() if k in self.emitted)
        ready = (INPUTS_OP, io_name(emitted[0]) if emitted else READY_OUTPUT)
        self.g.defs = {INPUTS_OP: inputs_op(self.p, op_name(self.p.name, INPUTS_OP), emitted), **self.g.defs}
        self.g.deps[INPUTS_OP] = {}
        op = context_op(self.p, op_name(self.p.name, CONTEXT_OP), final, step_key=self.step_key)
        # Ordering needs only the outputs nobody reads; depending on each of them also ties every output to
        # the final_context asset (Dagster refuses asset-graph outputs that lead to no asset).
        consumed = {u for sources in self.g.upstream.values() for u in sources}
        unread = [(node, out) for node, d in self.g.defs.items() for out in _outputs(d) if (node, out) not in consumed]
        self.add(CONTEXT_OP, op, {}, None, [ready, *unread])
        self.g.upstream[CONTEXT_OP] = [ready, *final.values()]  # lineage: the context holds every key
        for gate, producers in self.before_gate.items():
            sources = [p for p in producers if p not in self.g.upstream[gate]]
            if sources:  # added to the gate's own fan-in (a join's), if it has one
                merged = [*self.fan_in.get(gate, ()), *sources]
                self.g.deps[gate][AFTER_INPUT] = MultiDependencyDefinition([DependencyDefinition(*p) for p in merged])
        self.g.live = final
        return self.g


def _outputs(definition: OpDefinition | GraphDefinition) -> list[str]:
    return [o.name for o in definition.output_defs]


def build_graph(pipeline: Pipeline, step_key: Callable[[str], str]) -> BuiltGraph:
    """Expand `pipeline` (validated) into nodes and dependencies."""
    return _Builder(pipeline, step_key).build()
