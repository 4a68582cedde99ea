"""The approval audit trail: every request, decision, ignored decision, timeout, escalation and resume is an
engine event in the run's event log (readable in the UI and after the run), with a JSON record as metadata."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from dagster import DagsterEventType, DagsterInstance, DagsterRun, MetadataValue

# not exported by name in Dagster 1.13; the only way to attach metadata to an event outside a step's own output
from dagster._core.events import EngineEventData

from flujo_dagster.adapter.control.chain import chain_runs
from flujo_dagster.names import AUDIT_GATE, AUDIT_KEY, AUDIT_KIND, IGNORED_PREFIX

__all__ = ["AUDIT_KEY", "IGNORED_PREFIX", "AuditEvent", "AuditKind", "audit", "audit_trail", "record_ignored"]

AuditKind = Literal["request", "decision", "ignored", "approved", "rejected", "timeout", "escalation", "resume"]


@dataclass(frozen=True)
class AuditEvent:
    """One audit event of an approval gate, as read back from the event log."""

    run_id: str
    kind: AuditKind
    gate: str
    message: str
    timestamp: float
    record: dict[str, Any]


def _prefix(kind: str, gate: str) -> str:
    return f"flujo approval {kind} at {gate}: "


def audit(
    instance: DagsterInstance,
    run: DagsterRun,
    kind: AuditKind,
    gate: str,
    message: str,
    *,
    step_key: str | None = None,
    **fields: object,
) -> None:
    """Append an audit event about `gate` to `run`'s event log (also after the run ended)."""
    record = {"kind": kind, "gate": gate, **fields}
    instance.report_engine_event(
        _prefix(kind, gate) + message,
        dagster_run=run,
        engine_event_data=EngineEventData(
            metadata={AUDIT_KEY: MetadataValue.json(record), AUDIT_KIND: kind, AUDIT_GATE: gate}
        ),
        step_key=step_key,
    )


def record_ignored(
    instance: DagsterInstance,
    run: DagsterRun,
    gate: str,
    ignored: tuple[tuple[str, str], ...],
    *,
    step_key: str | None = None,
) -> None:
    """Record the decisions a gate ignores, with their reasons, once per content of the decision tags (a
    wait-mode gate polling, or a sensor ticking, reports a decision once)."""
    if not ignored:
        return
    current = instance.get_run_by_id(run.run_id) or run
    seen = hashlib.sha256(json.dumps(sorted(ignored)).encode()).hexdigest()[:16]
    if current.tags.get(IGNORED_PREFIX + gate) == seen:
        return
    instance.add_run_tags(run.run_id, {IGNORED_PREFIX + gate: seen})
    for key, reason in ignored:
        audit(instance, run, "ignored", gate, f"tag {key}: {reason}", step_key=step_key, tag=key, reason=reason)


def audit_trail(run_id: str, *, instance: DagsterInstance) -> list[AuditEvent]:
    """The audit events of every run in `run_id`'s chain (its root and all re-executions): run by run, oldest
    run first, each run's events in the order they were recorded (a resume is recorded on the run it resumes)."""
    events: list[AuditEvent] = []
    for member in chain_runs(instance, run_id):
        for entry in instance.all_logs(member.run_id, of_type=DagsterEventType.ENGINE_EVENT):
            dagster_event = entry.dagster_event
            data = dagster_event.event_specific_data if dagster_event is not None else None
            metadata = getattr(data, "metadata", None) or {}
            value = metadata.get(AUDIT_KEY)
            if value is None:
                continue
            text = (dagster_event.message if dagster_event is not None else None) or entry.user_message
            record = value.value if isinstance(value.value, dict) else json.loads(str(value.value))
            events.append(
                AuditEvent(
                    run_id=member.run_id,
                    kind=record["kind"],
                    gate=record["gate"],
                    message=text.removeprefix(_prefix(record["kind"], record["gate"])),
                    timestamp=entry.timestamp,
                    record=record,
                )
            )
    return events
