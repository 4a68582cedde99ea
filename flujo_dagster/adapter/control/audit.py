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
from flujo_dagster.runtime.tags import cut

__all__ = [
    "AUDIT_KEY",
    "IGNORED_PREFIX",
    "AuditEvent",
    "AuditKind",
    "audit",
    "audit_trail",
    "record_ignored",
    "run_audit",
]

AuditKind = Literal[
    "request", "decision", "ignored", "approved", "rejected", "timeout", "escalation", "resume", "resume_needed"
]


MAX_EDITS_SHOWN = 100
"""At most this many edited keys of one decision are read back from its audit event."""


@dataclass(frozen=True)
class AuditEvent:
    """One audit event of an approval gate, as read back from the event log."""

    run_id: str
    kind: AuditKind
    gate: str
    message: str
    timestamp: float
    record: dict[str, Any]

    def edits(self) -> list[tuple[str, str, str]]:
        """(key, before, after) of each key a decision edited, as the gate recorded them (JSON text, cut short);
        anything else in the record's `edits` is skipped (the event log is read, never trusted to be well formed).
        """
        raw = self.record.get("edits")
        if not isinstance(raw, dict):
            return []
        found = []
        for key, change in list(raw.items())[:MAX_EDITS_SHOWN]:
            if isinstance(key, str) and isinstance(change, dict):
                before, after = change.get("before"), change.get("after")
                if isinstance(before, str) and isinstance(after, str):
                    found.append((cut(key, 200), cut(before, 600), cut(after, 600)))
        return found


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


MAX_IGNORED_REMEMBERED = 256
"""How many ignored records of one gate are remembered as audited (`flujo/ignored/<gate>`, 17 characters each);
past that, the further ones are summed up in one audit event instead of one each."""
_FULL = "full"


def _record_digest(key: str, raw: str) -> str:
    """What an ignored record is remembered by: its tag key and content (not the other records of the gate)."""
    return hashlib.sha256(json.dumps([key, raw]).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _remembered(value: str) -> list[str]:
    """The digests in a `flujo/ignored/<gate>` tag (anything else in it, written by hand, is dropped)."""
    parts = value[: (MAX_IGNORED_REMEMBERED + 1) * 17].split(",")
    return [p for p in parts if p == _FULL or (len(p) == 16 and all(c in "0123456789abcdef" for c in p))]


def record_ignored(
    instance: DagsterInstance,
    run: DagsterRun,
    gate: str,
    ignored: tuple[tuple[str, str], ...],
    *,
    step_key: str | None = None,
) -> list[tuple[str, str]]:
    """Record the records a gate ignores, with their reasons, once per record (its tag key and content in `run`'s
    tags): a wait-mode gate polling, a sensor ticking, or another tag added reports no record twice. Returns
    the (tag, reason) pairs audited now."""
    if not ignored:
        return []
    current = instance.get_run_by_id(run.run_id) or run
    seen = _remembered(current.tags.get(IGNORED_PREFIX + gate, ""))
    new = [(key, reason, _record_digest(key, run.tags.get(key, ""))) for key, reason in ignored]
    new = [(key, reason, digest) for key, reason, digest in dict.fromkeys(new) if digest not in seen]
    if not new or _FULL in seen:
        return []
    room = MAX_IGNORED_REMEMBERED - len(seen)
    audited, rest = new[:room], new[room:]
    memory = [*seen, *(digest for _, _, digest in audited), *([_FULL] if rest else [])]
    instance.add_run_tags(run.run_id, {IGNORED_PREFIX + gate: ",".join(memory)})
    for key, reason, _ in audited:
        shown = cut(key, 200)
        audit(instance, run, "ignored", gate, f"tag {shown}: {reason}", step_key=step_key, tag=shown, reason=reason)
    if rest:
        message = f"{len(rest)} more ignored record(s), past the {MAX_IGNORED_REMEMBERED} audited one by one"
        audit(instance, run, "ignored", gate, message, step_key=step_key, tag="", reason=message)
    return [(key, reason) for key, reason, _ in audited]


def run_audit(instance: DagsterInstance, run_id: str) -> list[AuditEvent]:
    """The audit events of run `run_id` alone, in the order they were recorded."""
    events: list[AuditEvent] = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
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
                run_id=run_id,
                kind=record["kind"],
                gate=record["gate"],
                message=text.removeprefix(_prefix(record["kind"], record["gate"])),
                timestamp=entry.timestamp,
                record=record,
            )
        )
    return events


def audit_trail(run_id: str, *, instance: DagsterInstance) -> list[AuditEvent]:
    """The audit events of every run in `run_id`'s proven chain (its root and all re-executions): run by run,
    oldest run first, each run's events in the order they were recorded (a resume is recorded on the run it
    resumes)."""
    return [event for member in chain_runs(instance, run_id) for event in run_audit(instance, member.run_id)]
