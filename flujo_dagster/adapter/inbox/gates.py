"""What the inbox shows of a parked gate, gathered from the instance (no HTTP here): the waiting gate as
`pending` lists it, its recorded request and policy, the values it shows, the decisions so far (counted, and
ignored with the reason) and the fields a reviewer may edit (with the JSON Schemas the gate recorded for them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from dagster import DagsterInstance, DagsterRun

from flujo_dagster.adapter.control.approvals import PendingApproval
from flujo_dagster.adapter.control.evidence import evidence
from flujo_dagster.adapter.inbox.forms import EditField, edit_field
from flujo_dagster.adapter.inbox.payload import Shown, shown_values
from flujo_dagster.adapter.inbox.render import Rendered, clean, render_value
from flujo_dagster.adapter.inbox.schemas import read_edit_schemas
from flujo_dagster.names import REQUEST_PREFIX
from flujo_dagster.runtime.approvals import Decision, Request, normal_name, tally

__all__ = ["GateView", "gate_path", "gate_view", "may_decide"]


def gate_path(run_id: str, gate: str) -> str:
    """The inbox path of a gate's page (each part percent-encoded), as `config.inbox_gate_url` builds it."""
    return f"/gates/{quote(run_id, safe='')}/{quote(gate, safe='')}"


@dataclass(frozen=True)
class GateView:
    """A parked gate as a page shows it."""

    waiting: PendingApproval
    job: str
    created: str
    request: Request | None
    shown: Shown
    rendered: tuple[tuple[str, Rendered], ...] = ()
    counted: tuple[Decision, ...] = ()
    ignored: tuple[tuple[str, str], ...] = ()
    edits: tuple[EditField, ...] = field(default_factory=tuple)

    @property
    def path(self) -> str:
        """The gate page's path in the inbox."""
        return gate_path(self.waiting.run_id, self.waiting.gate)

    @property
    def preview(self) -> str:
        """The request's short preview, cleaned (shown when the values cannot be read)."""
        return clean(self.waiting.preview)

    @property
    def approvals(self) -> int:
        """How many approvals count so far."""
        return len({normal_name(d.by) for d in self.counted if d.verdict == "approve"})


def may_decide(waiting: PendingApproval, name: str) -> bool:
    """Whether `name` is among the gate's approvers now (anyone may when it names none)."""
    if waiting.approvers is None:
        return True
    return normal_name(name) in {normal_name(a) for a in waiting.approvers}


def _decisions(
    instance: DagsterInstance, run: DagsterRun, gate: str, request: Request, secret: str | None
) -> tuple[tuple[Decision, ...], tuple[tuple[str, str], ...]]:
    """The decisions on `gate` that count so far and the records ignored (with why), as `pending` tallies them."""
    found = evidence(instance, run, [gate])[gate]
    outcome = tally(
        found.records,
        request,
        binding=found.binding,
        requester=found.requester,
        now=datetime.now(UTC),
        secret=secret,
        validate_edits=False,
        verify_signature=secret is not None,
    )
    return outcome.counted, outcome.ignored


def gate_view(
    instance: DagsterInstance, run: DagsterRun, waiting: PendingApproval, *, secret: str | None, full: bool
) -> GateView:
    """The view of `waiting` (a gate of `run`); `full` adds the decisions so far and the edit fields."""
    created = datetime.fromtimestamp(_created(instance, run), UTC).isoformat(timespec="seconds")
    raw = run.tags.get(REQUEST_PREFIX + waiting.gate)
    request = Request.from_tag(raw, gate=waiting.gate) if raw is not None and not waiting.problem else None
    if not isinstance(request, Request):
        return GateView(waiting, run.job_name, created, None, Shown(None, waiting.problem))
    shown = shown_values(instance, run, waiting.gate, request)
    rendered = tuple((k, render_value(v)) for k, v in (shown.values or {}).items())
    if not full:
        return GateView(waiting, run.job_name, created, request, shown, rendered)
    counted, ignored = _decisions(instance, run, waiting.gate, request, secret)
    schemas = read_edit_schemas(instance, run, waiting.gate, request.editable) if request.editable else {}
    edits = tuple(edit_field(key, shown.values, schemas.get(key)) for key in request.editable)
    return GateView(waiting, run.job_name, created, request, shown, rendered, counted, ignored, edits)


def _created(instance: DagsterInstance, run: DagsterRun) -> float:
    """When `run` was created (0 when the instance does not say)."""
    record = instance.get_run_record_by_id(run.run_id)
    return record.create_timestamp.timestamp() if record is not None else 0.0
