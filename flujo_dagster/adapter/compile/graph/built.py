"""What graph building produces: op definitions, their dependencies, the final producer of each key, and the
data lineage between nodes."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from dagster import (
    DependencyDefinition,
    GraphDefinition,
    InputMapping,
    MultiDependencyDefinition,
    NodeInvocation,
    OpDefinition,
)

# What `.collect()` in a `@graph` function compiles to; dagster 1.13 does not export it (pinned by
# tests/test_map.py). Building the graph from dependency dicts keeps step keys and names flat and ours.
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition

from flujo_dagster.adapter.ops.flow import Producer
from flujo_dagster.dsl.steps import Step

__all__ = ["INPUT", "BuiltGraph", "Dep", "Live", "Owner", "outputs"]

INPUT: Producer = ("", "")
"""Marker: the key's value comes from flujo_inputs (emitted only when needed)."""
Live = dict[str, Producer]
"""The node output holding each key's value at a point of the graph."""
Owner = tuple[Step, bool]
"""A DSL node and whether one op runs all of it."""
Dep = DependencyDefinition | MultiDependencyDefinition | DynamicCollectDependencyDefinition


class BuiltGraph:
    """Nodes, dependencies, the final producer of each key, and data lineage between nodes."""

    def __init__(self) -> None:
        self.defs: dict[str, OpDefinition | GraphDefinition] = {}
        self.deps: dict[str, dict[str, Dep]] = {}
        self.upstream: dict[str, list[Producer]] = {}
        self.live: Live = {}
        self.input_mappings: list[InputMapping] = []
        """The graph's inputs: one per upstream key (into its `flujo_upstream_<key>` op) and per dep."""
        self.input_assets: dict[str, tuple[str, ...]] = {}
        """The asset key path each graph input is mapped to."""
        self.owners: dict[str, Owner] = {}
        """The DSL node each op was expanded from, and whether the op runs all of it (an inline op); ops of
        flujo's own (`flujo_inputs`, `flujo_context`, upstream ops) have none. Code versions come from it."""

    def dependencies(self) -> dict[NodeInvocation, dict[str, Dep]]:
        """Dependencies keyed by invocation: node names alias the pipeline-prefixed op definitions."""
        return {NodeInvocation(d.name, alias=node): self.deps.get(node, {}) for node, d in self.defs.items()}

    def gates_before(self, gates: Collection[str]) -> dict[str, frozenset[str]]:
        """For each node, the nodes of `gates` it depends on, directly or not (through any input)."""
        sources = {
            node: {d.node for dep in deps.values() for d in dep.get_node_dependencies()}
            for node, deps in self.deps.items()
        }
        found: dict[str, frozenset[str]] = {}

        def before(node: str) -> frozenset[str]:
            if node not in found:
                found[node] = frozenset()  # the graph is acyclic; this only guards the recursion
                direct = sources.get(node, set())
                found[node] = frozenset({s for s in direct if s in gates}.union(*(before(s) for s in direct)))
            return found[node]

        return {node: before(node) for node in self.defs}

    def frontier(self, keep: Sequence[Producer], candidates: Sequence[Producer]) -> list[Producer]:
        """The fan-in sources an op needs for ordering: `keep` (always), and the candidates that no other
        candidate reads (in a chain, only the last): the others come before those anyway."""
        consumed = {u for p in candidates for u in self.upstream.get(p[0], ())}
        return list(dict.fromkeys([*keep, *(p for p in candidates if p not in consumed)]))


def outputs(definition: OpDefinition | GraphDefinition) -> list[str]:
    """The output names of a node definition."""
    return [o.name for o in definition.output_defs]
