"""What a reviewer sees on an asset materialization: a bounded preview of the value, its type, what the steps
that produced it cost, the models they used, and the approval record of a gate that approved it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)
from pydantic import BaseModel

from flujo_dagster.adapter.control.chain import chain_runs, same_run
from flujo_dagster.adapter.control.costs import AgentCallSummary, metadata_calls
from flujo_dagster.adapter.storage.budgets import chain_of
from flujo_dagster.names import (
    APPROVAL_PREFIX,
    APPROVED_OUTPUT,
    CACHE_HITS,
    MODELS,
    PREVIEW,
    PRODUCED_BY,
    REJECTED_OUTPUT,
    SAVED_COST_USD,
    STEP_PATH,
    TOTAL_COST_USD,
    TOTAL_INPUT_TOKENS,
    TOTAL_OUTPUT_TOKENS,
    TYPE,
)
from flujo_dagster.runtime.tags import cut
from flujo_dagster.runtime.values import adapter_for, jsonable

__all__ = [
    "PREVIEW_CHARS",
    "TABLE_ROWS",
    "RegionEvents",
    "approval_record",
    "gate_entry",
    "gate_records",
    "plain",
    "preview",
    "readable_type",
    "region_calls",
    "review_metadata",
]

PREVIEW_CHARS = 4_000
"""At most this many characters of text or JSON in a preview."""
TABLE_ROWS = 20
CELL_CHARS = 200


_QUALIFIED = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")


def readable_type(type_label: str) -> str:
    """A type name without module paths (`list[tests.defs.Source]` -> `list[Source]`)."""
    return _QUALIFIED.sub(r"\1", type_label)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _cell(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple | dict):
        return _cut(json.dumps(value, ensure_ascii=False, default=str), CELL_CHARS)
    return _cut(str(value), CELL_CHARS)


def _table(rows: Sequence[BaseModel]) -> MetadataValue:
    model = type(rows[0])
    columns = list(model.model_fields)
    records = [
        TableRecord({c: _cell(v) for c, v in row.model_dump().items() if c in columns}) for row in rows[:TABLE_ROWS]
    ]
    schema = TableSchema(columns=[TableColumn(name=c, type="string") for c in columns])
    return MetadataValue.table(records, schema=schema)


def preview(value: object, annotation: object) -> MetadataValue:
    """Markdown for text, a table (first `TABLE_ROWS` rows) for a list of models of one class, JSON otherwise;
    text and JSON longer than `PREVIEW_CHARS` are cut (then shown as a Markdown code block)."""
    if isinstance(value, str):
        return MetadataValue.md(_cut(value, PREVIEW_CHARS) if value else "*(empty)*")
    if isinstance(value, list) and value and all(type(v) is type(value[0]) for v in value):
        if isinstance(value[0], BaseModel):
            return _table(value)
    # JSON values (dates, decimals... as text); NaN and infinities stay floats, which JSON metadata refuses
    dumped = json.loads(json.dumps(jsonable(adapter_for(annotation), value), default=str))
    text = json.dumps(dumped, ensure_ascii=False, indent=2)
    if len(text) <= PREVIEW_CHARS and isinstance(dumped, dict | list) and _finite(dumped):
        return MetadataValue.json(dumped)
    return MetadataValue.md(f"```json\n{_cut(text, PREVIEW_CHARS)}\n```")


def _finite(data: object) -> bool:
    try:
        json.dumps(data, allow_nan=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class RegionEvents:
    """The step outputs of a run (and, for a re-execution, of its chain) that asset metadata is made from."""

    events: tuple[tuple[str, DagsterEvent], ...]
    """(run id, STEP_OUTPUT event), oldest run first; a step's outputs come from the newest run that has any."""

    @classmethod
    def load(cls, instance: DagsterInstance, run_id: str, exclude_step: str) -> RegionEvents:
        """Step outputs of the run chain of `run_id`, except those of `exclude_step` (the running step)."""
        run = instance.get_run_by_id(run_id)
        chained = run is not None and run.parent_run_id is not None
        run_ids = [r.run_id for r in chain_runs(instance, run_id)] if chained else [run_id]
        newest: dict[str, str] = {}
        collected: list[tuple[str, DagsterEvent]] = []
        for rid in run_ids:
            for record in instance.all_logs(rid, of_type=DagsterEventType.STEP_OUTPUT):
                event = record.dagster_event
                if event is None or event.step_key is None or event.step_key == exclude_step:
                    continue
                newest[_base(event.step_key)] = rid
                collected.append((rid, event))
        return cls(tuple((rid, e) for rid, e in collected if newest[_base(e.step_key or "")] == rid))

    def of(self, step_keys: frozenset[str]) -> Iterable[tuple[str, DagsterEvent]]:
        """The outputs of the steps `step_keys` (each element of a fan-out included)."""
        return ((rid, e) for rid, e in self.events if _base(e.step_key or "") in step_keys)


def _base(step_key: str) -> str:
    """A step key without its fan-out element (`graph.op[key]` -> `graph.op`)."""
    return step_key.split("[", 1)[0]


def plain(metadata: Mapping[str, object]) -> dict[str, object]:
    """Metadata values as plain Python values."""
    return {k: v.value if isinstance(v, MetadataValue) else v for k, v in metadata.items()}


def region_calls(events: RegionEvents, step_keys: frozenset[str]) -> list[AgentCallSummary]:
    """The agent calls recorded by the steps `step_keys`."""
    calls: list[AgentCallSummary] = []
    for rid, event in events.of(step_keys):
        if event.step_output_data is not None:
            calls.extend(metadata_calls(plain(event.step_output_data.metadata), rid))
    return calls


def approval_record(events: RegionEvents, gate_keys: frozenset[str]) -> dict[str, object]:
    """The approval record of the latest of the gates `gate_keys` that approved (empty when none did)."""
    record: dict[str, object] = {}
    for _, event in events.of(gate_keys):
        data = event.step_output_data
        if data is None:
            continue
        found = {k: v for k, v in plain(data.metadata).items() if k.startswith(APPROVAL_PREFIX)}
        if found.get(APPROVAL_PREFIX + "verdict") == "approve":
            record = found
    return record


MAX_APPROVALS_LISTED = 100
"""At most this many gates' records in an asset's `flujo/approvals` (a Map of many gated elements: the first)."""
COMMENT_CHARS = 500
"""A reviewer's comment, as an asset downstream carries it, is cut to this many characters."""
_DECIDED_OUTPUTS = frozenset({APPROVED_OUTPUT, REJECTED_OUTPUT})


def gate_entry(metadata: Mapping[str, object], run_id: str) -> dict[str, object]:
    """One gate's record, as the gate wrote it on its `flujo_approved`/`flujo_rejected` output."""

    def text(field: str) -> str:
        value = metadata.get(APPROVAL_PREFIX + field)
        return value if isinstance(value, str) else ""

    path = metadata.get(STEP_PATH)
    return {
        "gate": text("gate"),
        "path": path if isinstance(path, str) else "",
        "verdict": text("verdict"),
        "by": text("by"),
        "at": text("at"),
        "comment": cut(text("comment"), COMMENT_CHARS),
        "payload_hash": text("payload_hash"),
        "edited": [k for k in text("edited").split(", ") if k],
        "run_id": run_id,
    }


def _gate_entries(instance: DagsterInstance, run_id: str, wanted: Callable[[str], bool]) -> list[dict[str, object]]:
    """The records of the gate steps `wanted` (by step key) that decided in run `run_id`, from their outputs."""
    entries: list[dict[str, object]] = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        event = record.dagster_event
        if event is None or event.step_output_data is None or not wanted(event.step_key or ""):
            continue
        data = event.step_output_data
        if data.step_output_handle.output_name in _DECIDED_OUTPUTS:
            entries.append(gate_entry(plain(data.metadata), run_id))
    return entries


def _wanted(step_key: str, *, gates: frozenset[str], taken: frozenset[str], ran: frozenset[str] | None) -> bool:
    """Whether a run that executed the steps `ran` (None: all) holds the record of gate step `step_key`: one of
    `gates`, not `taken` from a later run (as a whole, or that element), and executed there."""
    base = _base(step_key)
    if base not in gates or base in taken or step_key in taken:
        return False
    return ran is None or step_key in ran or base in ran


def gate_records(instance: DagsterInstance, run: DagsterRun, gate_keys: frozenset[str]) -> list[dict[str, object]]:
    """The decision of each gate `gate_keys` (each element of a gate in a Map) in the run its value in `run` comes
    from: `run` when it executed the gate (or that element of it); otherwise the nearest ancestor of its proven
    chain, with the same inputs, that executed it (a re-execution of a subset loads the gate's outputs from there).
    Never a run with other inputs, and nothing behind a run that executed everything (a full re-execution with
    other inputs, where a branch skipped the gate, carries no ancestor's approval). Read from the gates' step
    outputs in the event log, so it works in any executor and process. A gate that parked or did not run has none.
    Oldest run first, at most `MAX_APPROVALS_LISTED`."""
    found: list[list[dict[str, object]]] = []
    whole: set[str] = set()  # gates executed as a whole by a run read already: nothing of them older counts
    elements: set[str] = set()  # elements of mapped gates (step keys) executed by a run read already
    for member in chain_of(run, instance):  # the run first, then its parent, ...
        if member.run_id != run.run_id and not same_run(member, run):
            break
        planned = member.step_keys_to_execute
        ran = None if planned is None else frozenset(planned)
        taken = frozenset(whole | elements)
        wanted = partial(_wanted, gates=gate_keys, taken=taken, ran=ran)
        found.append(_gate_entries(instance, member.run_id, wanted))
        if ran is None:
            break
        whole |= {k for k in ran if k in gate_keys}  # unmapped, or every element (a gate step without `[...]`)
        elements |= {k for k in ran if _base(k) in gate_keys and k != _base(k)}
        if whole >= gate_keys:
            break
    return [entry for entries in reversed(found) for entry in entries][:MAX_APPROVALS_LISTED]


def review_metadata(
    value: object, annotation: object, type_label: str, calls: Sequence[AgentCallSummary]
) -> dict[str, Any]:
    """Preview, type, total cost and tokens, models, and the agent steps counted; the call cache's hits and what
    they saved, when there were some."""
    cost = sum((c.cost_usd for c in calls), Decimal(0))
    hits = sum(c.cache_hits for c in calls)
    cached: dict[str, Any] = {}
    if hits:
        cached = {CACHE_HITS: hits, SAVED_COST_USD: float(sum((c.saved_cost_usd for c in calls), Decimal(0)))}
    return {
        **cached,
        PREVIEW: preview(value, annotation),
        TYPE: readable_type(type_label),
        TOTAL_COST_USD: float(cost),
        TOTAL_INPUT_TOKENS: sum(c.input_tokens for c in calls),
        TOTAL_OUTPUT_TOKENS: sum(c.output_tokens for c in calls),
        MODELS: ", ".join(sorted({c.model for c in calls})) or "(none)",
        PRODUCED_BY: ", ".join(dict.fromkeys(c.step_path for c in calls)) or "(no agent step)",
    }
