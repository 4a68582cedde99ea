"""Names of ops, inputs and outputs: derived from step paths and keys, sanitised, stable across builds."""

from __future__ import annotations

import keyword
import re

__all__ = ["CONTEXT_OP", "CONTEXT_OUTPUT", "INPUTS_OP", "io_name", "op_name"]

INPUTS_OP = "flujo_inputs"
CONTEXT_OP = "flujo_context"
CONTEXT_OUTPUT = "final_context"
_DAGSTER_RESERVED = frozenset({"context", "config", "input", "output", "type", *keyword.kwlist})
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def io_name(key: str) -> str:
    """The input/output name that carries context key `key` (a trailing `_` for Dagster's reserved words)."""
    name = _UNSAFE.sub("_", key)
    return f"{name}_" if name in _DAGSTER_RESERVED else name


def op_name(*path: str) -> str:
    """The op name for a step path (`refine`, `i2`, `draft` -> `refine__i2__draft`)."""
    return "__".join(_UNSAFE.sub("_", part) for part in path)
