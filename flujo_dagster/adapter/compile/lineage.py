"""The data flow between ops that asset lineage follows: an approval gate's control outputs stand for the keys
it shows (what a step after a gate waits for is the approved value, not what the gate was fed)."""

from __future__ import annotations

from flujo_dagster import names
from flujo_dagster.adapter.compile.graph.built import BuiltGraph
from flujo_dagster.names import APPROVED_OUTPUT, DECISION_OUTPUT, REJECTED_OUTPUT

__all__ = ["data_upstream"]

Producer = tuple[str, str]
_CONTROL = frozenset({APPROVED_OUTPUT, REJECTED_OUTPUT, DECISION_OUTPUT})


def data_upstream(built: BuiltGraph) -> dict[str, list[Producer]]:
    """`built.upstream` with each gate's control outputs replaced by the gate's shown-key outputs."""
    shown: dict[str, list[Producer]] = {}
    for node, definition in built.defs.items():
        if names.op_kind(definition.tags) is names.OpKind.APPROVAL:
            shown[node] = [(node, name) for name in definition.output_dict if name not in _CONTROL]

    def sources(producer: Producer) -> list[Producer]:
        op, out = producer
        return shown[op] if op in shown and out in _CONTROL else [producer]

    return {
        node: list(dict.fromkeys(s for p in producers for s in sources(p)))
        for node, producers in built.upstream.items()
    }
