"""Budgets in Dagster terms: which ledger a run charges (resource `budget_ledger`), which scopes a step's
requests are charged to, and recovery of reservations left open by a killed step process."""

from __future__ import annotations

import calendar
import importlib
import re
import threading
from datetime import UTC, date, datetime
from pathlib import Path

from dagster import DagsterInstance, DagsterRun, OpExecutionContext

from flujo_dagster.dsl.budget import Budget
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.names import BUDGET_DAY_TAG, BUDGET_LEDGER_KEY, PARTITION_TAG, SCHEDULED_TIME_TAG
from flujo_dagster.pricing.ledger import BudgetLedger
from flujo_dagster.pricing.ledger_sqlite import SqliteBudgetLedger
from flujo_dagster.pricing.prices import PriceBook
from flujo_dagster.runtime.budget import BudgetContext, Guard, day_scope, guard_for

__all__ = ["BUDGET_DAY_TAG", "BUDGET_LEDGER_KEY", "InstanceLedger", "budget_context", "budget_day", "run_scope"]

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:$|[T -])")


class InstanceLedger:
    """The default `budget_ledger` resource: the ledger of the Dagster instance the run is on.

    A SQLite file `<instance storage directory>/flujo/budgets.sqlite` (shared by every process on the machine),
    or, when the instance keeps its runs in PostgreSQL, tables in that database (shared by every machine).
    One ledger object per location and process.
    """

    _lock = threading.Lock()
    _open: dict[str, BudgetLedger] = {}

    def for_instance(self, instance: DagsterInstance) -> BudgetLedger:
        """The ledger for `instance`."""
        url = getattr(instance.run_storage, "postgres_url", None)
        where = url if isinstance(url, str) else str(Path(instance.storage_directory()) / "flujo" / "budgets.sqlite")
        with self._lock:
            ledger = self._open.get(where)
            if ledger is None:
                ledger = _postgres(where) if isinstance(url, str) else SqliteBudgetLedger(where)
                self._open[where] = ledger
        return ledger


def _postgres(url: str) -> BudgetLedger:
    """A PostgreSQL ledger; its driver comes with the `postgres` extra, loaded only by who uses it."""
    try:
        module = importlib.import_module("flujo_dagster.pricing.ledger_postgres")
    except ImportError as exc:
        raise ConfigurationError(
            f"the Dagster instance keeps its runs in PostgreSQL, so budgets are kept there too, but its driver is "
            f"missing ({exc}); install flujo-dagster[postgres]"
        ) from exc
    ledger: BudgetLedger = module.PostgresBudgetLedger(url)
    return ledger


def ledger_of(resource: object, instance: DagsterInstance) -> BudgetLedger:
    """The ledger a run charges, from the `budget_ledger` resource (an `InstanceLedger` or any ledger)."""
    if isinstance(resource, InstanceLedger):
        return resource.for_instance(instance)
    if isinstance(resource, BudgetLedger):
        return resource
    raise ConfigurationError(
        f"resource {BUDGET_LEDGER_KEY!r} must be an InstanceLedger or a BudgetLedger (SqliteBudgetLedger, "
        f"PostgresBudgetLedger), got {type(resource).__name__}"
    )


def _partition_day(key: str) -> date | None:
    """The date a partition key starts with (`2026-11-26`, `2026-11-26-06:00`), or None for other keys."""
    found = _DATE.match(key)
    if found is None:
        return None
    year, month, day = (int(g) for g in found.groups())
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return date(year, month, day)


def budget_day(run: DagsterRun, instance: DagsterInstance) -> str:
    """The calendar day a run charges to a per-day budget: the day its schedule's tick checked (tag
    `flujo/budget_day`), else a date partition's own day (a backfill charges each partition's day), else the
    scheduled time's date, else the date (UTC) its first
    run (before any re-execution) was created."""
    chosen = run.tags.get(BUDGET_DAY_TAG)  # set by a flujo schedule's tick: the day it checked
    if chosen is not None and _partition_day(chosen) is not None:
        return chosen
    day = _partition_day(run.tags.get(PARTITION_TAG, ""))
    if day is not None:
        return day.isoformat()
    scheduled = run.tags.get(SCHEDULED_TIME_TAG)
    if scheduled:
        return datetime.fromisoformat(scheduled).date().isoformat()
    record = instance.get_run_record_by_id(run.root_run_id or run.run_id)
    created = record.create_timestamp if record is not None else datetime.now(UTC)
    return created.astimezone(UTC).date().isoformat()


def run_scope(budget: Budget, pipeline: Pipeline, run: DagsterRun, instance: DagsterInstance) -> str:
    """The ledger scope of a pipeline's budget: the run (re-executions share their root run's) or the day."""
    if budget.scope == "day":
        return day_scope(pipeline.name, budget_day(run, instance))
    return f"run:{run.root_run_id or run.run_id}"


def budget_context(
    context: OpExecutionContext, pipeline: Pipeline, step: AgentStep, path: str, prices: PriceBook
) -> BudgetContext | None:
    """What `step`'s requests are charged to in this run, or None when no budget applies. The first call in
    an op also recovers the reservations that a killed process of an earlier run of the chain left open."""
    budgets = [(b, "") for b in (pipeline.budget,) if b is not None]
    budgets += [(b, f":step:{path}") for b in (step.budget,) if b is not None]
    if not budgets:
        return None
    run, instance = context.run, context.instance
    ledger = ledger_of(getattr(context.resources, BUDGET_LEDGER_KEY), instance)
    guards: tuple[Guard, ...] = tuple(
        guard_for(b, run_scope(b, pipeline, run, instance) + suffix) for b, suffix in budgets
    )
    parent = run.parent_run_id
    while parent is not None:  # a re-execution: what its ancestors left reserved is settled first
        ledger.recover(parent)
        ancestor = instance.get_run_by_id(parent)
        parent = ancestor.parent_run_id if ancestor is not None else None
    return BudgetContext(ledger=ledger, guards=guards, run_id=run.run_id, prices=prices)
