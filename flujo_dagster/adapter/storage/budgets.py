"""Budgets in Dagster terms: which ledger a run charges (resource `budget_ledger`) and whether it is still the one
the instance recorded, which scopes a step's requests are charged to, and recovery of reservations left open by a
killed step process.

No run tag chooses a scope: a per-day budget charges the day of each request (in the budget's timezone), and a
run-scoped one the root of the run's re-execution chain as the instance's own run records prove it (finished
runs only: a run whose named parent is still running starts its own chain)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, OpExecutionContext

from flujo_dagster.adapter.storage.instance_db import load_postgres, shared_place
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.errors import ConfigurationError, StorageError
from flujo_dagster.names import (
    BUDGET_LEDGER_KEY,
    INSTANCE_LEDGER_ID_KEY,
    LEDGER_ID_PREFIX,
    PARTITION_TAG,
    SCHEDULED_TIME_TAG,
)
from flujo_dagster.pricing.ledger import BudgetLedger, IdentifiedLedger
from flujo_dagster.pricing.ledger_sqlite import SqliteBudgetLedger
from flujo_dagster.pricing.prices import PriceBook
from flujo_dagster.runtime.budget import BudgetContext, Guard, guard_for

__all__ = [
    "BUDGET_LEDGER_KEY",
    "MAX_CHAIN",
    "InstanceLedger",
    "OpBudgets",
    "adopt_ledger",
    "chain_of",
    "checked_ledger",
    "dimensions_of",
    "ledger_of",
]

MAX_CHAIN = 100
"""A re-execution chain (the run and its ancestors) longer than this is cut there: the run budget of a run more
than 99 re-executions away from its root is the one of its 99th ancestor (docs/costs.md)."""

_FINISHED = frozenset({DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED})
"""The run statuses after which no process of the run is running: only such an ancestor joins a chain."""


class InstanceLedger:
    """The default `budget_ledger` resource: the ledger of the Dagster instance the run is on.

    A SQLite file `<instance storage directory>/flujo/budgets.sqlite` (shared by every process on the machine),
    or, when the instance keeps its runs in PostgreSQL, tables in that database (shared by every machine): see
    `instance_db.shared_place`.
    One ledger object per location and process.
    """

    _lock = threading.Lock()
    _open: dict[str, BudgetLedger] = {}

    def for_instance(self, instance: DagsterInstance) -> BudgetLedger:
        """The ledger for `instance`."""
        place = shared_place(instance, LEDGER_FILE)
        with self._lock:
            ledger = self._open.get(place.where)
            if ledger is None:
                ledger = _postgres(place.where) if place.postgres else SqliteBudgetLedger(place.where)
                self._open[place.where] = ledger
        return ledger

    @classmethod
    def owns(cls, ledger: BudgetLedger, instance: DagsterInstance) -> bool:
        """Whether `ledger` is the object `for_instance(instance)` returned in this process."""
        with cls._lock:
            return cls._open.get(shared_place(instance, LEDGER_FILE).where) is ledger


LEDGER_FILE = "budgets.sqlite"
"""The instance's own ledger's SQLite file in `<storage directory>/flujo/` (without PostgreSQL run storage)."""


def _postgres(url: str) -> BudgetLedger:
    """The PostgreSQL ledger at `url` (the instance's database)."""
    made = load_postgres("flujo_dagster.pricing.ledger_postgres", "PostgresBudgetLedger", url, what="the budget ledger")
    return cast("BudgetLedger", made)


def ledger_of(resource: object, instance: DagsterInstance, *, check: bool = True) -> BudgetLedger:
    """The ledger a run charges, from the `budget_ledger` resource (an `InstanceLedger` or any ledger), checked
    to be the one the instance recorded (`checked_ledger`) unless `check=False`."""
    if isinstance(resource, InstanceLedger):
        ledger = resource.for_instance(instance)
        return checked_ledger(ledger, instance) if check else ledger
    if isinstance(resource, BudgetLedger):
        return checked_ledger(resource, instance) if check else resource
    raise ConfigurationError(
        f"resource {BUDGET_LEDGER_KEY!r} must be an InstanceLedger or a BudgetLedger (SqliteBudgetLedger, "
        f"PostgresBudgetLedger), got {type(resource).__name__}"
    )


def checked_ledger(ledger: BudgetLedger, instance: DagsterInstance) -> BudgetLedger:
    """`ledger`, after checking that it is the ledger `instance` recorded (the first use records it): the
    instance's own ledger under one key wherever it is, any other under its location. A ledger whose file or
    tables were deleted, replaced or restored has another id: `StorageError`, so that budgets never silently start
    again from $0. A ledger without an identity (a custom `BudgetLedger`) is used as it is."""
    if not isinstance(ledger, IdentifiedLedger):
        return ledger
    key = _id_key(ledger, instance)
    found = ledger.ledger_id()
    recorded = instance.run_storage.get_cursor_values({key}).get(key)
    if recorded is None:  # first use; read back, so that of two processes recording two ledgers one is refused
        instance.run_storage.set_cursor_values({key: found})
        recorded = instance.run_storage.get_cursor_values({key}).get(key)
    if recorded != found:
        raise StorageError(
            f"The budget ledger at {ledger.location} is not the one this Dagster instance recorded (ledger id "
            f"{found}, recorded {recorded}): it was deleted, replaced or restored from an older copy, so the spend "
            "and reservations it held are lost and budgets would start again from $0. No model request was made. "
            "Restore the ledger; or, to start counting in this ledger on purpose, run `flujo-dagster ledger adopt` "
            "(with the code location's module when its budget_ledger resource is not the default)."
        )
    return ledger


def _id_key(ledger: IdentifiedLedger, instance: DagsterInstance) -> str:
    """The instance key-value entry that records `ledger`'s id."""
    if isinstance(ledger, BudgetLedger) and InstanceLedger.owns(ledger, instance):
        return INSTANCE_LEDGER_ID_KEY
    return LEDGER_ID_PREFIX + ledger.location


def adopt_ledger(instance: DagsterInstance, resource: object = None) -> tuple[str, str, str | None]:
    """Record the ledger of `resource` (default: the instance's own) as the one `instance` charges, whatever was
    recorded before: (its location, its id, the id recorded before or None)."""
    ledger = ledger_of(InstanceLedger() if resource is None else resource, instance, check=False)
    if not isinstance(ledger, IdentifiedLedger):
        raise ConfigurationError(
            f"the budget ledger {type(ledger).__name__} keeps no identity: there is nothing to adopt"
        )
    key = _id_key(ledger, instance)
    found = ledger.ledger_id()
    before = instance.run_storage.get_cursor_values({key}).get(key)
    instance.run_storage.set_cursor_values({key: found})
    return ledger.location, found, before


def chain_of(run: DagsterRun, instance: DagsterInstance) -> list[DagsterRun]:
    """The run and its ancestors as the instance records them, the run first and the root last: each parent must
    be a finished run (success, failure, canceled) of the instance, of the same job, not already in the chain. A
    client can name any parent or root run id when it launches a run; the named root is ignored, and the chain
    stops at a parent the instance does not prove, at a parent still running (its open reservations are in flight,
    not left behind, and its budget is not shared) and after `MAX_CHAIN` runs."""
    chain = [run]
    seen = {run.run_id}
    while chain[-1].parent_run_id is not None and len(chain) < MAX_CHAIN:
        parent = instance.get_run_by_id(chain[-1].parent_run_id)
        if parent is None or parent.job_name != run.job_name or parent.run_id in seen:
            break
        if parent.status not in _FINISHED:
            break
        chain.append(parent)
        seen.add(parent.run_id)
    return chain


class OpBudgets:
    """What the agent steps of one op are charged to: made once per op; its first budgeted request checks the
    ledger, walks the run's re-execution chain and recovers the reservations that a killed process of an earlier
    (finished) run of the chain left open, once for the op."""

    def __init__(self, context: OpExecutionContext, pipeline: Pipeline, prices: PriceBook) -> None:
        self._context, self._pipeline, self._prices = context, pipeline, prices
        self._lock = threading.Lock()
        self._run: tuple[BudgetLedger, str, dict[str, str]] | None = None

    def _of_run(self) -> tuple[BudgetLedger, str, dict[str, str]]:
        """(the ledger, the run scope `run:<root run id>`, the run's dimensions), computed on the first call."""
        with self._lock:
            if self._run is None:
                run, instance = self._context.run, self._context.instance
                ledger = ledger_of(getattr(self._context.resources, BUDGET_LEDGER_KEY), instance)
                chain = chain_of(run, instance)
                for ancestor in chain[1:]:  # a re-execution: what its ancestors left reserved is settled first
                    ledger.recover(ancestor.run_id)
                self._run = (ledger, f"run:{chain[-1].run_id}", dimensions_of(run, self._pipeline))
            return self._run

    def for_step(self, step: AgentStep, path: str) -> BudgetContext | None:
        """What `step`'s requests are charged to in this run, or None when no budget applies."""
        pipeline = self._pipeline
        budgets = [(b, "") for b in (pipeline.budget,) if b is not None]
        budgets += [(b, f":step:{path}") for b in (step.budget,) if b is not None]
        if not budgets:
            return None
        ledger, root, dimensions = self._of_run()
        guards: tuple[Guard, ...] = tuple(
            guard_for(b, suffix, pipeline=pipeline.name) if b.scope == "day" else guard_for(b, root + suffix)
            for b, suffix in budgets
        )
        run_id = self._context.run.run_id
        return BudgetContext(ledger=ledger, guards=guards, run_id=run_id, prices=self._prices, dimensions=dimensions)


def dimensions_of(run: DagsterRun, pipeline: Pipeline) -> dict[str, str]:
    """What a run's spend is reported by, recorded with each ledger entry (never a budget scope): `partition`,
    the partition key of a partitioned pipeline's run; `scheduled_day`, the date of a scheduled run's time in the
    schedule's timezone (UTC without one). A tag that does not parse is left out."""
    dimensions: dict[str, str] = {}
    partition = run.tags.get(PARTITION_TAG)
    if partition and pipeline.partitions is not None:
        dimensions["partition"] = partition
    scheduled = run.tags.get(SCHEDULED_TIME_TAG)
    zone = pipeline.schedule.timezone if pipeline.schedule is not None else "UTC"
    try:
        when = datetime.fromisoformat(scheduled) if scheduled else None
        if when is not None:
            aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
            dimensions["scheduled_day"] = aware.astimezone(ZoneInfo(zone)).date().isoformat()
    except (ValueError, OverflowError, OSError, ZoneInfoNotFoundError):
        pass  # a tag anyone can set: an unreadable one is no dimension
    return dimensions
