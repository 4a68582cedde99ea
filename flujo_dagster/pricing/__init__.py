"""Prices and budgets.

The budget ledger: `BudgetLedger` (the protocol), `SqliteBudgetLedger` (the default) and `PostgresBudgetLedger`
(extra `postgres`; loaded on first use, so psycopg2 is needed only by who uses it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from flujo_dagster.pricing.ledger import (
    USD_NANOS,
    AdmittingLedger,
    BudgetLedger,
    IdentifiedLedger,
    LedgerEntry,
    Limits,
    Reservation,
    ScopeTotals,
    Usage,
    Waiting,
    format_usd,
)
from flujo_dagster.pricing.ledger_sqlite import SqliteBudgetLedger

if TYPE_CHECKING:
    from flujo_dagster.pricing.ledger_postgres import PostgresBudgetLedger

__all__ = [
    "USD_NANOS",
    "AdmittingLedger",
    "BudgetLedger",
    "IdentifiedLedger",
    "LedgerEntry",
    "Limits",
    "PostgresBudgetLedger",
    "Reservation",
    "ScopeTotals",
    "SqliteBudgetLedger",
    "Usage",
    "Waiting",
    "format_usd",
]


def __getattr__(name: str) -> object:
    if name == "PostgresBudgetLedger":
        return importlib.import_module("flujo_dagster.pricing.ledger_postgres").PostgresBudgetLedger
    raise AttributeError(f"module 'flujo_dagster.pricing' has no attribute {name!r}")
