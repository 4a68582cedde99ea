"""Names Dagster refuses (pure: no dagster import); the conventions themselves live in `flujo_dagster.names`."""

from __future__ import annotations

from flujo_dagster.names import DAGSTER_RESERVED_NAMES, io_name

__all__ = ["DAGSTER_RESERVED_NAMES", "io_name"]
