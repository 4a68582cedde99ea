"""The steps a resume re-executes: a parked run ends SUCCESS, and Dagster re-executes "from failure" only a FAILURE
run, never a step that succeeded or was skipped in it, so a resume names its steps."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

from flujo_dagster.errors import ApprovalError
from flujo_dagster.names import HELD_KEY, PARKED_TAG

__all__ = ["resume_step_keys"]

_MAPPED = re.compile(r"^(?P<base>.*)\[(?P<key>[^\[\]]*)\]$")


def _marked(instance: DagsterInstance, run_id: str) -> tuple[set[str], set[str], set[str]]:
    """The steps of run `run_id` that parked (a gate) or held (a join), that succeeded, and that failed."""
    entries = instance.all_logs(
        run_id, of_type={DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}
    )
    marked, succeeded, failed = set(), set(), set()
    for entry in entries:
        event, key = entry.dagster_event, entry.step_key
        if event is None or key is None:
            continue
        if event.event_type == DagsterEventType.STEP_SUCCESS:
            succeeded.add(key)
        elif event.event_type == DagsterEventType.STEP_FAILURE:
            failed.add(key)
        else:
            data = event.engine_event_data
            metadata: Mapping[str, object] = data.metadata if data is not None else {}
            if PARKED_TAG in metadata or HELD_KEY in metadata:
                marked.add(key)
    return marked, succeeded, failed


def _downstream(instance: DagsterInstance, run: DagsterRun) -> dict[str, list[str]]:
    """Each step of `run`'s execution plan (mapped steps as `<op>[?]`) and the steps reading its outputs."""
    snapshot_id = run.execution_plan_snapshot_id
    snapshot = instance.get_execution_plan_snapshot(snapshot_id) if snapshot_id else None
    if snapshot is None:
        raise ApprovalError(f"run {run.run_id} has no execution plan in this instance: it cannot be resumed")
    readers: dict[str, list[str]] = {}
    for step in snapshot.steps:
        for step_input in step.inputs:
            for handle in step_input.upstream_output_handles:
                readers.setdefault(handle.step_key, []).append(step.key)
    return readers


def resume_step_keys(instance: DagsterInstance, run: DagsterRun) -> list[str] | None:
    """The step keys a resume of parked run `run` re-executes: every gate that parked and every join that held
    in it, every step that failed, and everything downstream of them that did not succeed in it (a Map's mapped
    steps as the element's resolved key, `each__publish[i2]`, or all elements, `each__publish[?]`, after a
    step that was not mapped). None for a run parked the old way (its gate failed the run): it resumes from
    failure. `ApprovalError` for a run that did not fail and where no gate parked (a re-execution that inherited
    a parked run's tags without running its gate)."""
    marked, succeeded, failed = _marked(instance, run.run_id)
    if not marked:
        if run.status == DagsterRunStatus.FAILURE:
            return None
        raise ApprovalError(
            f"no gate parked in run {run.run_id} (status {run.status.value}; its parked tags were inherited from "
            f"run {run.parent_run_id or 'another run'}): it cannot be resumed; resume the run that parked"
        )
    readers = _downstream(instance, run)
    chosen: dict[str, None] = dict.fromkeys(sorted(marked | failed))
    todo = deque(chosen)
    while todo:
        key = todo.popleft()
        match = _MAPPED.match(key)
        base, element = (f"{match['base']}[?]", match["key"]) if match else (key, None)
        for reader in readers.get(base, ()):
            resolved = reader
            if reader.endswith("[?]") and element not in (None, "?"):
                resolved = f"{reader[:-3]}[{element}]"
            if resolved in chosen or (resolved in succeeded and resolved not in marked):
                continue
            chosen[resolved] = None
            todo.append(resolved)
    every = {k[:-3] for k in chosen if k.endswith("[?]")}  # all elements chosen: no single element too
    return [k for k in chosen if not (_MAPPED.match(k) and not k.endswith("[?]") and k.split("[")[0] in every)]
