"""A leaf step (function or agent step) as one op reading its keys and writing each key it returns."""

from __future__ import annotations

from flujo_dagster.adapter.compile.graph.built import Live
from flujo_dagster.adapter.compile.graph.state import GraphState
from flujo_dagster.adapter.ops.flow import Producer
from flujo_dagster.adapter.ops.leaf import step_op
from flujo_dagster.dsl.steps import Step
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import io_name, op_name

__all__ = ["expand_leaf"]


def expand_leaf(
    b: GraphState, step: Step, live: Live, prefix: tuple[str, ...], path: str, gate: Producer | None
) -> None:
    """Op `<prefix>__<step>`: its reads wired to their live producers; its writes become live."""
    keys = b.p.keys_of(step)
    if keys.writes is None:
        raise ConfigurationError(f"{path}: writes no known key; validate the pipeline first")
    node = op_name(*prefix, step.name)
    wiring = b.wiring(node, path, keys.reads, keys.writes, split=keys.split, gated=gate is not None)
    data = {io_name(k): b.must(k, live, path) for k in keys.reads}
    b.add(node, step_op(b.p, step, wiring), data, gate)
    live.update({k: (node, io_name(k)) for k in keys.writes})
