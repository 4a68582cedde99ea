"""A run's re-execution chain as the instance proves it (never as a client named it), the runs of it that share
the run's inputs, and who launched them.

A client can name any `parentRunId`/`rootRunId` when it launches a run, so `dagster/root_run_id` proves nothing:
a chain is walked from the run through each parent the instance records (`storage.budgets.chain_of`: same job,
finished, no cycle, at most `MAX_CHAIN` runs), and its root is the last run of that walk."""

from __future__ import annotations

from collections.abc import Collection

from dagster import DagsterInstance, DagsterRun, RunsFilter

from flujo_dagster.adapter.storage.budgets import chain_of
from flujo_dagster.errors import FlujoDagsterError
from flujo_dagster.names import AWAITING_PREFIX, PARKED_RUN_TAG, PARTITION_TAG, USER_TAG
from flujo_dagster.runtime.approvals import Requester

__all__ = [
    "chain_of_run",
    "chain_runs",
    "live_resume",
    "proven_root",
    "resumed_gates",
    "requester_of",
    "same_inputs",
    "same_run",
]


def proven_root(instance: DagsterInstance, run: DagsterRun) -> str:
    """The id of `run`'s root as the instance proves it (the last run of `chain_of`)."""
    return chain_of(run, instance)[-1].run_id


def chain_runs(instance: DagsterInstance, run_id: str) -> list[DagsterRun]:
    """Run `run_id`'s proven root and every run whose proven chain leads to it, oldest first (a run that names
    the root without descending from it is left out). `FlujoDagsterError` when the run is not in `instance`."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise FlujoDagsterError(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})")
    return chain_of_run(instance, run)


def chain_of_run(instance: DagsterInstance, run: DagsterRun) -> list[DagsterRun]:
    """`chain_runs` of `run` as given (a run deleted meanwhile still has its chain read)."""
    root = proven_root(instance, run)
    # not instance.get_run_group: it finds re-executions by a tag that execute_job's re-executions do not carry
    records = [
        r
        for r in instance.get_run_records(filters=RunsFilter(job_name=run.job_name))
        if r.dagster_run.run_id == root
        or (r.dagster_run.parent_run_id is not None and proven_root(instance, r.dagster_run) == root)
    ]
    return [r.dagster_run for r in sorted(records, key=lambda r: r.create_timestamp)]


def _inputs(run: DagsterRun) -> tuple[object, str | None]:
    """What a run's inputs are made of: its run config and its partition."""
    return run.run_config, run.tags.get(PARTITION_TAG)


def same_run(one: DagsterRun, other: DagsterRun) -> bool:
    """Whether two runs have the same inputs (run config, partition): one can stand for the other's resume."""
    return _inputs(one) == _inputs(other)


def live_resume(run: DagsterRun, gates: Collection[str]) -> bool:
    """Whether re-execution `run`, resuming `gates` of its parent, is or may still become a resume that went past
    them: it has not finished, or one of those gates ran in it (marked itself decided there, or parked there).
    Only `gates` count: a resume inherits its parent's tags, and with them the gates decided before. A resume
    cancelled or failed before its gates never stands for one: counting it would keep its parent waiting for good."""
    if not run.is_finished:
        return True
    return run.tags.get(PARKED_RUN_TAG) == run.run_id or any(
        run.tags.get(AWAITING_PREFIX + g) == "decided" for g in gates
    )


def resumed_gates(parent: DagsterRun) -> list[str]:
    """The gates a resume of `parent` runs again: those it is parked at, pending or marked resumed."""
    return [
        k.removeprefix(AWAITING_PREFIX)
        for k, v in parent.tags.items()
        if k.startswith(AWAITING_PREFIX) and v in ("pending", "resumed")
    ]


def same_inputs(instance: DagsterInstance, run: DagsterRun) -> list[DagsterRun]:
    """`run` and its proven ancestors back to the first one with other inputs (run config, partition), `run`
    first: the runs whose run state a decision made on one of them may be about."""
    chain = chain_of(run, instance)
    inputs = _inputs(run)
    same = [run]
    for ancestor in chain[1:]:
        if _inputs(ancestor) != inputs:
            break
        same.append(ancestor)
    return same


def requester_of(instance: DagsterInstance, run: DagsterRun) -> Requester:
    """Who launched the run state `run` is in: the `dagster/user` of the oldest run of its proven chain with the
    same inputs (a re-execution by someone else does not make them the requester; a re-execution with other
    inputs does)."""
    first = same_inputs(instance, run)[-1]
    return Requester(run_id=first.run_id, user=first.tags.get(USER_TAG))
