"""Names Dagster refuses, and the input/output name that carries each key (pure: no dagster import)."""

from __future__ import annotations

import keyword
import re

__all__ = ["DAGSTER_RESERVED_NAMES", "io_name"]

#: Dagster's `DISALLOWED_NAMES` (dagster/_core/definitions/utils.py, 1.13), kept in step by a test.
DAGSTER_RESERVED_NAMES = frozenset(
    {
        "context",
        "conf",
        "config",
        "meta",
        "arg_dict",
        "dict",
        "input_arg_dict",
        "output_arg_dict",
        "int",
        "str",
        "float",
        "bool",
        "input",
        "output",
        "type",
        *keyword.kwlist,
    }
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def io_name(key: str) -> str:
    """The input/output name that carries context key `key`: the key itself, with a trailing `_` when
    Dagster reserves the name (rule V-NAME refuses a key whose name would then collide with another's)."""
    name = _UNSAFE.sub("_", key)
    return f"{name}_" if name in DAGSTER_RESERVED_NAMES else name
