"""The graph under construction and the wiring every node kind shares: which node output holds each key's
value, adding a node with its dependencies, and the names and keys of the ops it adds."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from dagster import DependencyDefinition, GraphDefinition, MultiDependencyDefinition, OpDefinition
from dagster._core.definitions.dependency import DynamicCollectDependencyDefinition

from flujo_dagster.adapter.compile.graph.built import INPUT, BuiltGraph, Dep, Live, Owner
from flujo_dagster.adapter.compile.graph.gates import GateOrder
from flujo_dagster.adapter.ops.flow import Producer
from flujo_dagster.adapter.ops.leaf import StepWiring
from flujo_dagster.adapter.ops.park import ParkWatch
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.flow import keys_before_gates, walk
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import Step
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import AFTER_INPUT, GATE_INPUT, INPUTS_OP, io_name, op_name

__all__ = ["ExpandSteps", "GraphState"]

_NOTHING_COLLECTED: Mapping[str, Producer] = MappingProxyType({})


class ExpandSteps(Protocol):
    """Expands a sequence of steps (the dispatcher of `sequence`); returns the gate in force at its end."""

    def __call__(
        self,
        b: GraphState,
        steps: Sequence[Step],
        live: Live,
        prefix: tuple[str, ...],
        path: str,
        gate: Producer | None,
        /,
    ) -> Producer | None: ...


class GraphState:
    """One pipeline's graph being built. Node kinds expand their children back through `steps`."""

    def __init__(self, pipeline: Pipeline, step_key: Callable[[str], str], expand: ExpandSteps) -> None:
        self.p = pipeline
        self.fields = pipeline.fields
        self.step_key = step_key
        self.g = BuiltGraph()
        self.emitted: set[str] = set()  # initial keys some op reads from flujo_inputs
        self.gates = GateOrder()
        self.fan_in: dict[str, list[Producer]] = {}
        self.in_fanout = False  # inside the body of a Map expanded with inline=False
        # per approval gate (by id), the keys definitely written before it: the run state it reads and hashes
        self.before_gates = keys_before_gates(pipeline.steps, pipeline.fields, pipeline.initial_keys())
        # with approval gates, the joining ops hold while a gate before them is parked (ops/park.py)
        gated = any(isinstance(s, Approval) for _, s in walk(pipeline.steps, pipeline.name))
        self.watch = ParkWatch() if gated else None
        self.approvals: set[str] = set()  # the approval gates' node names
        self.owning: list[Owner] = []  # the DSL nodes being expanded, innermost last (`BuiltGraph.owners`)
        self._expand = expand

    def steps(
        self, steps: Sequence[Step], live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
    ) -> Producer | None:
        """Expand a sequence; returns the gate in force at its end."""
        return self._expand(self, steps, live, prefix, path, gate)

    def resolve(self, key: str, live: Live) -> Producer | None:
        """The node output holding `key`'s value in `live` (flujo_inputs' output for an initial key)."""
        producer = live.get(key)
        if producer == INPUT:
            self.emitted.add(key)
            return (INPUTS_OP, io_name(key))
        return producer

    def must(self, key: str, live: Live, path: str) -> Producer:
        """`resolve`, for a key validation guarantees a value."""
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
        collected: Mapping[str, Producer] = _NOTHING_COLLECTED,
    ) -> None:
        """Add `node` with its data inputs, gate, ordering fan-in and per-element collected inputs."""
        if node in self.g.defs:
            raise ConfigurationError(f"two ops would be named {node!r}; rename one of the steps")
        unique = self.fan_in[node] = list(dict.fromkeys(fan_in))
        self.g.defs[node] = definition
        if self.owning:
            self.g.owners[node] = self.owning[-1]
        self.g.deps[node] = _dependencies(data, gate, unique, collected)
        self.g.upstream[node] = [*data.values(), *fan_in, *collected.values(), *([gate] if gate is not None else [])]
        self.gates.place(node, self.g.upstream[node], dynamic=self.in_fanout)

    def wiring(
        self,
        node: str,
        path: str,
        reads: Sequence[str],
        writes: Sequence[str],
        *,
        split: bool = False,
        gated: bool = False,
        optional: frozenset[str] = frozenset(),
    ) -> StepWiring:
        """The wiring of op `node` (its definition named after the pipeline)."""
        return StepWiring(
            op=node,
            definition=op_name(self.p.name, node),
            path=path,
            reads=tuple(reads),
            writes=tuple(writes),
            split=split,
            gated=gated,
            optional=optional,
        )

    def ordered(self, keys: frozenset[str]) -> tuple[str, ...]:
        """`keys` in the context model's field order."""
        return tuple(k for k in self.fields if k in keys)

    def state_only(self, node: str, state: Sequence[Producer], shown: Sequence[Producer]) -> None:
        """Leave out of `node`'s data lineage the producers it reads only to hash the run state (`state`, not
        `shown`): the values it writes derive from the shown keys alone. Its ordering was made with them."""
        hidden = set(state) - set(shown)
        self.g.upstream[node] = [p for p in self.g.upstream[node] if p not in hidden]

    def gate_reads(self, gate: Approval) -> tuple[str, ...]:
        """What approval gate `gate` reads: the keys it shows, then every other key definitely written before it
        (its run state, which a decision is bound to)."""
        state = self.before_gates.get(id(gate), frozenset()) - frozenset(gate.show)
        return (*gate.show, *self.ordered(state))


def _dependencies(
    data: Mapping[str, Producer], gate: Producer | None, fan_in: Sequence[Producer], collected: Mapping[str, Producer]
) -> dict[str, Dep]:
    """An op's inputs: data from their producers, its gate, a Nothing fan-in for ordering, per-element collects."""
    deps: dict[str, Dep] = {name: DependencyDefinition(*p) for name, p in data.items()}
    if gate is not None:
        deps[GATE_INPUT] = DependencyDefinition(*gate)
    if fan_in:
        deps[AFTER_INPUT] = MultiDependencyDefinition([DependencyDefinition(*p) for p in fan_in])
    deps.update({name: DynamicCollectDependencyDefinition(*p) for name, p in collected.items()})
    return deps
