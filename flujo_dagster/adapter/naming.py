"""Names of ops, inputs and outputs: derived from step paths and keys, sanitised, stable across builds."""

from __future__ import annotations

import re

from flujo_dagster.validation.names import io_name

__all__ = [
    "CONTEXT_KEY",
    "CONTEXT_OP",
    "CONTEXT_OUTPUT",
    "INPUTS_OP",
    "READY_OUTPUT",
    "graph_name",
    "io_name",
    "op_name",
    "step_key",
]

INPUTS_OP = "flujo_inputs"
CONTEXT_OP = "flujo_context"
CONTEXT_OUTPUT = "final_context"
CONTEXT_KEY = "__context__"
"""The key name the final context is stored under (not a field name: pydantic refuses leading underscores)."""
READY_OUTPUT = "flujo_ready"
"""`flujo_inputs`' Nothing output when it emits no key."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def graph_name(pipeline: str, has_assets: bool) -> str:
    """The graph's name: the pipeline's, or `<pipeline>_graph` inside a graph-backed asset (Dagster wants graph
    and job names distinct in a code location)."""
    return f"{pipeline}_graph" if has_assets else pipeline


def step_key(pipeline: str, has_assets: bool, node: str) -> str:
    """The step key Dagster gives the top-level node `node` of a pipeline's job."""
    return f"{graph_name(pipeline, True)}.{node}" if has_assets else node


def op_name(*path: str) -> str:
    """The op name for a step path (`refine`, `i2`, `draft` -> `refine__i2__draft`)."""
    return "__".join(_UNSAFE.sub("_", part) for part in path)
