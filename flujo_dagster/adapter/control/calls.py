"""The records of a run's agent calls, for `flujo-dagster calls`: found through the `flujo/call_records` metadata of its
steps' outputs and failures (the run and the runs of its re-execution group, oldest first), read back size-capped
by total functions (a bad file or record is reported, never raised), and rendered as text (docs/calls.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from dagster import DagsterEventType, DagsterInstance

from flujo_dagster import names
from flujo_dagster.adapter.control.chain import chain_runs
from flujo_dagster.adapter.storage.call_files import calls_metadata, read_calls

__all__ = ["RunCalls", "StoredCall", "render_call", "run_calls"]

_SHOWN = 2000  # characters of one message part shown in text (the JSON output has the whole stored record)


@dataclass(frozen=True)
class StoredCall:
    """One call record, with the run and step key whose metadata linked it."""

    run_id: str
    step_key: str
    record: dict[str, object]


@dataclass(frozen=True)
class RunCalls:
    """The call records of a run, and what could not be read."""

    calls: tuple[StoredCall, ...]
    problems: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    """The step path of every record read, selected or not, once each and sorted (to suggest a `step` that exists)."""

    def as_json(self) -> str:
        """The records and problems as JSON, every non-ASCII character escaped."""
        calls = [{"run_id": c.run_id, "step_key": c.step_key, **c.record} for c in self.calls]
        return json.dumps({"calls": calls, "problems": list(self.problems)}, ensure_ascii=True, indent=2)


def _linked(instance: DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step key, path) of each records file the run's step outputs and failures link, once each, in event order."""
    found: dict[str, str] = {}
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_OUTPUT, DagsterEventType.STEP_FAILURE}):
        event = entry.dagster_event
        metadata: Mapping[str, object] = {}
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_OUTPUT and event.step_output_data is not None:
            metadata = event.step_output_data.metadata
        elif event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data is not None:
            failure = event.step_failure_data.user_failure_data
            metadata = failure.metadata if failure is not None else {}
        path = calls_metadata(metadata)
        if path is not None:
            found.setdefault(path, entry.step_key or "")
    return [(step_key, path) for path, step_key in found.items()]


def _selected(path: str, step: str | None) -> bool:
    """Whether a record of the step at `path` is asked for: every one, or `step` and the steps inside it."""
    return step is None or path == step or path.startswith(step + names.PATH_SEPARATOR)


def run_calls(run_id: str, *, instance: DagsterInstance, step: str | None = None) -> RunCalls:
    """The call records of run `run_id` and of its re-execution group (oldest run first), only those of step path
    `step` (and the steps inside it) when given. `FlujoDagsterError` when the run is not in `instance`."""
    calls: list[StoredCall] = []
    problems: list[str] = []
    paths: dict[str, None] = {}
    for run in chain_runs(instance, run_id):
        for step_key, path in _linked(instance, run.run_id):
            read = read_calls(path, where=f"run {run.run_id} step {step_key}")
            problems.extend(read.problems)
            paths.update(dict.fromkeys(str(r["path"]) for r in read.records))
            calls.extend(StoredCall(run.run_id, step_key, r) for r in read.records if _selected(str(r["path"]), step))
    return RunCalls(tuple(calls), tuple(problems), tuple(sorted(paths)))


def _text(value: object, limit: int = _SHOWN) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else f"{text[:limit]}... [{len(text) - limit} more characters]"


def _part(part: object) -> str:
    """One message part in one line or a few: its kind, and its text, tool call or tool return."""
    if not isinstance(part, Mapping):
        return _text(part)
    kind = str(part.get("part_kind", "?"))
    if kind == "tool-call":
        return f"tool call {part.get('tool_name')}({_text(part.get('args'))})"
    if kind == "tool-return":
        return f"tool return {part.get('tool_name')}: {_text(part.get('content'))}"
    return f"{kind}: {_text(part.get('content'))}"


def _messages(messages: object) -> list[str]:
    if not isinstance(messages, list):
        return [f"  {_text(messages)}"]
    lines: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            lines.append(f"  {_text(message)}")
            continue
        kind = str(message.get("kind", "?"))
        if message.get("instructions"):
            lines.append(f"  [{kind}] instructions: {_text(message.get('instructions'))}")
        parts = message.get("parts")
        for part in parts if isinstance(parts, list) else [parts]:
            lines.append(f"  [{kind}] {_part(part)}")
    return lines


def _budget(budget: object) -> str:
    if not isinstance(budget, Mapping):
        return _text(budget)
    decision = str(budget.get("decision", "?"))
    scopes, requests = budget.get("scopes"), budget.get("requests")
    if not isinstance(requests, list):
        return decision
    shown = [
        f"reserved ${r.get('reserved_usd')} / {r.get('reserved_tokens')} tokens, charged ${r.get('charged_usd')} "
        f"({r.get('settled')})"
        for r in requests
        if isinstance(r, Mapping)
    ]
    where = ", ".join(map(str, scopes)) if isinstance(scopes, list) else _text(scopes)
    return f"{decision} in {where}: " + ("; ".join(shown) or "no request")


def render_call(call: StoredCall) -> list[str]:
    """The lines `flujo-dagster calls` prints for one record (any stored values, printed as found: run them
    through `printable` before a terminal)."""
    r = call.record
    usage = r.get("usage") if isinstance(r.get("usage"), Mapping) else {}
    assert isinstance(usage, Mapping)
    lines = [
        f"{call.run_id[:8]}  {r.get('path')}  attempt {r.get('attempt')}  {r.get('status')}  {r.get('model')} "
        f"({r.get('model_source') or '-'})  {r.get('latency_s')} s  cache {r.get('cache')}",
        f"  usage: {usage.get('requests')} request(s), {usage.get('input_tokens')} input / "
        f"{usage.get('output_tokens')} output tokens, ${r.get('cost_usd')} ({r.get('price_source') or 'no price'})",
        f"  budget: {_budget(r.get('budget'))}",
    ]
    if r.get("error"):
        lines.append(f"  error: {_text(r.get('error'))}")
    cut = r.get("cut")
    if cut:
        lines.append(f"  cut: {_text(cut)}")
    if r.get("redactions"):
        lines.append(f"  redacted: {_text(r.get('redactions'))} secret(s)")
    lines.append("  messages:")
    lines.extend("  " + line for line in _messages(r.get("messages")))
    lines.append(f"  output: {_text(r.get('output'))}")
    return lines
