"""A run's re-execution chain: its root run and every re-execution of it (resumes included), and who launched it."""

from __future__ import annotations

from dagster import DagsterInstance, DagsterRun, RunsFilter

from flujo_dagster.errors import FlujoDagsterError
from flujo_dagster.names import USER_TAG

__all__ = ["chain_runs", "requester_of"]


def chain_runs(instance: DagsterInstance, run_id: str) -> list[DagsterRun]:
    """Run `run_id`'s root and every run re-executing it, oldest first. `FlujoDagsterError` when the run is not
    in `instance`."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise FlujoDagsterError(f"run {run_id!r} is not in this Dagster instance ({instance.root_directory})")
    root = run.root_run_id or run.run_id
    # not instance.get_run_group: it finds re-executions by a tag that execute_job's re-executions do not carry
    records = [
        r
        for r in instance.get_run_records(filters=RunsFilter(job_name=run.job_name))
        if r.dagster_run.run_id == root or r.dagster_run.root_run_id == root
    ]
    return [r.dagster_run for r in sorted(records, key=lambda r: r.create_timestamp)]


def requester_of(instance: DagsterInstance, run: DagsterRun) -> str | None:
    """Who launched the run chain: the `dagster/user` of its root run (a re-execution by someone else does not
    make them the requester)."""
    root = instance.get_run_by_id(run.root_run_id) if run.root_run_id else run
    return (root or run).tags.get(USER_TAG)
