"""Names Dagster refuses, and what it accepts as identifiers, partition keys and timezones, decided without
dagster (the conventions themselves live in `flujo_dagster.names`).

Each mirrors a check of dagster 1.13 (`dagster._core.definitions.utils`, `AssetKey.to_python_identifier`,
`AssetCheckSpec.get_python_identifier`, `INVALID_PARTITION_SUBSTRINGS`); tests/test_validation_dagster.py keeps
them in step with Dagster's own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flujo_dagster.names import DAGSTER_RESERVED_NAMES, io_name

__all__ = [
    "DAGSTER_NAME_PATTERN",
    "DAGSTER_RESERVED_NAMES",
    "INVALID_PARTITION_SUBSTRINGS",
    "MAX_STORED_NAME",
    "asset_identifier",
    "check_identifier",
    "io_name",
    "is_dagster_name",
    "is_identifier_name",
    "is_timezone",
    "storage_name_problem",
]

DAGSTER_NAME_PATTERN = r"^[A-Za-z0-9_]+$"
"""Dagster's `VALID_NAME_REGEX_STR`: what job, op, output, schedule and check-output names must match."""
_NAME = re.compile(DAGSTER_NAME_PATTERN)

INVALID_PARTITION_SUBSTRINGS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")
"""Dagster's `INVALID_PARTITION_SUBSTRINGS`: a static partition key holding one of them is refused."""


MAX_STORED_NAME = 100
"""The longest partition key or asset key part (in characters) flujo accepts: each names a stored file or folder."""


def storage_name_problem(name: str) -> str | None:
    """Why `name` (a partition key, or one part of an asset key) cannot name a stored file or folder as given, or
    None: empty, `.` or `..`, a `/` or `\\`, a control character, or longer than `MAX_STORED_NAME` characters. The
    IO manager stores any name safely (encoded); this refuses, when the definitions load, those that could only be
    a mistake or an attempt to leave the storage root."""
    if name in ("", ".", ".."):
        return "it is empty" if not name else f"it is {name!r}, which names a folder, not a file"
    separators = [c for c in ("/", "\\") if c in name]
    if separators:
        return f"it holds {', '.join(map(repr, separators))}, a path separator"
    controls = sorted({c for c in name if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0})
    if controls:
        return f"it holds the control character(s) {', '.join(map(repr, controls))}"
    if len(name) > MAX_STORED_NAME:
        return f"it is {len(name)} characters long (at most {MAX_STORED_NAME})"
    return None


def is_dagster_name(name: str) -> bool:
    """Dagster's `check_valid_name`: legal characters and not a reserved word (`context`, `input`, ...)."""
    return bool(_NAME.match(name)) and name not in DAGSTER_RESERVED_NAMES


def asset_identifier(path: Sequence[str]) -> str:
    """`AssetKey(path).to_python_identifier()`: the parts joined by `__`, `-` and `.` made `_`."""
    return "__".join(path).replace("-", "_").replace(".", "_")


def check_identifier(path: Sequence[str], check: str) -> str:
    """`AssetCheckSpec(check, asset=AssetKey(path)).get_python_identifier()`: the output name a check gets. Dagster
    refuses it unless it matches `DAGSTER_NAME_PATTERN`."""
    return f"{asset_identifier(path)}_{check}".replace(".", "_")


def is_identifier_name(identifier: str) -> bool:
    """Whether an identifier Dagster derives (an output name) has only the characters Dagster allows."""
    return bool(_NAME.match(identifier))


def is_timezone(timezone: str) -> bool:
    """Whether `timezone` is an IANA timezone this machine knows: Dagster and flujo both load it with `zoneinfo`."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file
        return False
    return True
