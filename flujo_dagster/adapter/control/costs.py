"""What agent steps used and cost, read back from the output metadata in a run's event log (agent ops carry
`flujo/...` keys; inline ops a per-step table), for `run_pipeline` and `flujo-dagster costs`. A step that
failed after its agent calls were charged carries the same metadata on its failure event, so the calls of
failed steps are counted too: what is reported adds up to what the budget ledger recorded for the run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dagster import DagsterEvent, DagsterEventType, DagsterInstance

from flujo_dagster import names
from flujo_dagster.adapter.control.chain import chain_runs

__all__ = [
    "COST_EVENTS",
    "AgentCallSummary",
    "MalformedCall",
    "agent_calls",
    "event_calls",
    "metadata_calls",
    "run_costs",
]


@dataclass(frozen=True, kw_only=True)
class AgentCallSummary:
    """What one agent step used and cost, read back from its output metadata."""

    step_path: str
    model: str
    model_source: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal = Decimal(0)
    price_source: str = ""
    run_id: str = ""
    usage_unknown: bool = False
    """A response reported no usage: `cost_usd` is its reservation (budgeted) or a lower bound."""
    status: str = "ok"
    """`ok`, or `failed`: the step failed after these calls were charged."""
    cache_hits: int = 0
    """Model requests served from the call cache: no request, $0."""
    saved_cost_usd: Decimal = Decimal(0)
    """What those hits would have cost."""

    def render(self) -> str:
        """One line: `digest > agent:draft: function:offline-digest (offline), 1 request(s), 50 input / 20
        output tokens, $0.000052 (offline)`, then `, usage unknown`, `, step failed` and `, 1 cache hit(s) saving
        $0.000052` when so."""
        flags = (", usage unknown" if self.usage_unknown else "") + (", step failed" if self.status != "ok" else "")
        if self.cache_hits:
            flags += f", {self.cache_hits} cache hit(s) saving ${self.saved_cost_usd:.6f}"
        return (
            f"{self.step_path}: {self.model} ({self.model_source}), {self.requests} request(s), "
            f"{self.input_tokens} input / {self.output_tokens} output tokens, ${self.cost_usd:.6f} "
            f"({self.price_source or 'no price'}){flags}"
        )


class MalformedCall(ValueError):
    """An agent call record whose values are missing, not numbers, not finite or negative: skipped, never counted."""


def _count(values: Mapping[str, Any], key: str) -> int:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float | str) or str(value).strip() == "":
        raise MalformedCall(f"{key}={value!r} is not a count")
    try:
        number = Decimal(str(value))
    except ArithmeticError as exc:
        raise MalformedCall(f"{key}={value!r} is not a count") from exc
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        raise MalformedCall(f"{key}={value!r} is not a whole non-negative count")
    return int(number)


def _cost(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise MalformedCall(f"cost_usd={value!r} is not a number")
    try:
        cost = Decimal(str(value))
    except ArithmeticError as exc:
        raise MalformedCall(f"cost_usd={value!r} is not a number") from exc
    if not cost.is_finite() or cost < 0:
        raise MalformedCall(f"cost_usd={value!r} is not a finite non-negative number")
    return cost


def _summary(values: Mapping[str, Any], run_id: str) -> AgentCallSummary:
    for key in ("path", "model"):
        if values.get(key) is None:
            raise MalformedCall(f"{key} is missing")
    return AgentCallSummary(
        step_path=str(values["path"]),
        model=str(values["model"]),
        model_source=str(values.get("model_source") or "unknown"),
        requests=_count(values, "requests"),
        input_tokens=_count(values, "input_tokens"),
        output_tokens=_count(values, "output_tokens"),
        cost_usd=_cost(values.get("cost_usd")),
        price_source=str(values.get("price_source") or ""),
        run_id=run_id,
        usage_unknown=bool(values.get("usage_unknown")),
        status="ok" if values.get("status", "ok") == "ok" else "failed",
        cache_hits=_count(values, "cache_hits") if values.get("cache_hits") is not None else 0,
        saved_cost_usd=_cost(values.get("saved_cost_usd")),
    )


def _records(meta: Mapping[str, Any], failed: bool) -> list[Mapping[str, Any]]:
    """The raw call records of one output's metadata: an inline op's table rows, then an agent op's keys."""
    table = meta.get(names.STEPS_JSON)
    rows = [r for r in table if isinstance(r, Mapping) and r.get("model")] if isinstance(table, list) else []
    if names.MODEL in meta:
        keys = {
            "path": names.STEP_PATH,
            "model": names.MODEL,
            "model_source": names.MODEL_SOURCE,
            "requests": names.REQUESTS,
            "input_tokens": names.INPUT_TOKENS,
            "output_tokens": names.OUTPUT_TOKENS,
            "cost_usd": names.COST_USD,
            "price_source": names.PRICE_SOURCE,
            "usage_unknown": names.USAGE_UNKNOWN,
            "cache_hits": names.CACHE_HITS,
            "saved_cost_usd": names.SAVED_COST_USD,
        }
        rows.append({**{k: meta.get(v) for k, v in keys.items()}, "status": "failed" if failed else "ok"})
    return rows


def metadata_calls(
    meta: Mapping[str, Any], run_id: str = "", *, failed: bool = False, skipped: list[str] | None = None
) -> list[AgentCallSummary]:
    """The agent calls recorded in one output's (or, `failed`, one step failure's) metadata (plain values): an
    agent op's `flujo/...` keys, or an inline op's per-step table. A malformed record (missing, non-numeric,
    non-finite or negative values) is skipped, never raised: what was wrong is appended to `skipped`."""
    calls: list[AgentCallSummary] = []
    for record in _records(meta, failed):
        try:
            calls.append(_summary(record, run_id))
        except MalformedCall as exc:
            if skipped is not None:
                skipped.append(f"{record.get('path') or '(no step path)'}: {exc}")
    return calls


COST_EVENTS = {DagsterEventType.STEP_OUTPUT, DagsterEventType.STEP_FAILURE}
"""The events whose metadata records agent calls: step outputs, and failures of steps that had charged some."""


def event_calls(event: DagsterEvent, run_id: str, skipped: list[str] | None = None) -> list[AgentCallSummary]:
    """The agent calls recorded by one event: a step output's metadata, or a step failure's (`Failure`); malformed
    records are skipped (see `metadata_calls`)."""
    if event.event_type == DagsterEventType.STEP_OUTPUT and event.step_output_data is not None:
        meta = {k: v.value for k, v in event.step_output_data.metadata.items()}
        return metadata_calls(meta, run_id, skipped=skipped)
    if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data is not None:
        failure = event.step_failure_data.user_failure_data
        if failure is not None:
            meta = {k: v.value for k, v in failure.metadata.items()}
            return metadata_calls(meta, run_id, failed=True, skipped=skipped)
    return []


def agent_calls(
    events: Iterable[DagsterEvent], run_id: str = "", skipped: list[str] | None = None
) -> tuple[AgentCallSummary, ...]:
    """Every agent call in `events` (a run's step outputs and failures), inline ones included, in event order;
    malformed records are skipped and described in `skipped`."""
    calls: list[AgentCallSummary] = []
    for event in events:
        calls.extend(event_calls(event, run_id, skipped))
    return tuple(calls)


def run_costs(run_id: str, *, instance: DagsterInstance) -> tuple[AgentCallSummary, ...]:
    """The agent calls of run `run_id` and of every run of its re-execution group (a re-execution runs only
    the steps that had not completed, so nothing is counted twice), oldest run first."""
    calls: list[AgentCallSummary] = []
    for run in chain_runs(instance, run_id):
        logs = instance.all_logs(run.run_id, of_type=COST_EVENTS)
        events = (e.dagster_event for e in logs if e.dagster_event is not None)
        calls.extend(agent_calls(events, run.run_id))
    return tuple(calls)
