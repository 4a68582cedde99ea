"""Gated regions, and the ordering that keeps Dagster 1.13's in-process executor from spinning forever.

It spins when abandoning a step (downstream of a failure) makes a gated step skippable and nothing is left to
run: it handles skips, then abandons, never skips again. With every outside producer ahead of the gate, a
region's ops resolve when the gate does: all skipped (the gate went the other way) or all abandoned (something
before it failed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dagster import DependencyDefinition, MultiDependencyDefinition

from flujo_dagster.adapter.compile.graph.built import BuiltGraph
from flujo_dagster.adapter.ops.flow import Producer
from flujo_dagster.names import AFTER_INPUT

__all__ = ["GateOrder"]


class GateOrder:
    """The gated regions being expanded (the router or loop gate whose optional output decides whether a region's
    ops run or are skipped, innermost last), each node's enclosing regions when it was added, the outside
    producers each gate must wait for, and the nodes whose outputs are per element (fan-outs and the ops they
    map)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.regions_of: dict[str, tuple[str, ...]] = {}
        self.before_gate: dict[str, dict[Producer, None]] = {}
        self.dynamic: set[str] = set()

    def enter(self, gate: str) -> None:
        """Enter the region that `gate`'s optional output decides (a branch arm, later loop iterations)."""
        self.stack.append(gate)

    def leave(self) -> None:
        """Leave the innermost region."""
        self.stack.pop()

    def leave_to(self, depth: int) -> None:
        """Leave every region entered since the stack was `depth` deep."""
        del self.stack[depth:]

    def place(self, node: str, upstream: Sequence[Producer], *, dynamic: bool) -> None:
        """Record `node` (per element when `dynamic`) in the current regions, after its `upstream` producers."""
        if dynamic:
            self.dynamic.add(node)
        self.regions_of[node] = tuple(self.stack)
        for producer in upstream:
            self.order(producer, node)

    def order(self, producer: Producer, node: str) -> None:
        """Make `producer` run before the gate of every region holding `node` but not `producer`.

        Per-element outputs cannot feed a fan-in (Dagster refuses it) and need no such ordering: the only gates
        in a mapped body are approvals, and one element's ops run or are abandoned together."""
        source = producer[0]
        if source in self.dynamic:
            return
        for gate in self.regions_of[node]:
            if source != gate and gate not in self.regions_of.get(source, ()):
                self.before_gate.setdefault(gate, {})[producer] = None

    def wire(self, graph: BuiltGraph, fan_in: Mapping[str, Sequence[Producer]]) -> None:
        """Add each gate's outside producers to its `after` fan-in (merged with the gate's own, a join's)."""
        for gate, producers in self.before_gate.items():
            sources = [p for p in producers if p not in graph.upstream[gate]]
            if sources:
                merged = dict.fromkeys([*fan_in.get(gate, ()), *sources])
                graph.deps[gate][AFTER_INPUT] = MultiDependencyDefinition([DependencyDefinition(*p) for p in merged])
