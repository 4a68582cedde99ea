"""What agent steps used and cost, read back from the output metadata in a run's event log (agent ops carry
`flujo/...` keys; inline ops a per-step table), for `run_pipeline` and `flujo-dagster costs`. A step that
failed after its agent calls were charged carries the same metadata on its failure event, so the calls of
failed steps are counted too: what is reported adds up to what the budget ledger recorded for the run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from dagster import DagsterEvent, DagsterEventType, DagsterInstance

from flujo_dagster import names
from flujo_dagster.adapter.control.chain import chain_runs

__all__ = ["COST_EVENTS", "AgentCallSummary", "agent_calls", "event_calls", "metadata_calls", "run_costs"]


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

    def render(self) -> str:
        """One line: `digest > agent:draft: function:offline-digest (offline), 1 request(s), 50 input / 20
        output tokens, $0.000052 (offline)`, then `, usage unknown` and `, step failed` when so."""
        flags = (", usage unknown" if self.usage_unknown else "") + (", step failed" if self.status != "ok" else "")
        return (
            f"{self.step_path}: {self.model} ({self.model_source}), {self.requests} request(s), "
            f"{self.input_tokens} input / {self.output_tokens} output tokens, ${self.cost_usd:.6f} "
            f"({self.price_source or 'no price'}){flags}"
        )


def _summary(values: Mapping[str, Any], run_id: str) -> AgentCallSummary:
    cost = values.get("cost_usd")
    return AgentCallSummary(
        step_path=str(values["path"]),
        model=str(values["model"]),
        model_source=str(values.get("model_source") or "unknown"),
        requests=int(values["requests"]),
        input_tokens=int(values["input_tokens"]),
        output_tokens=int(values["output_tokens"]),
        cost_usd=Decimal(str(cost)) if cost is not None else Decimal(0),
        price_source=str(values.get("price_source") or ""),
        run_id=run_id,
        usage_unknown=bool(values.get("usage_unknown")),
        status="ok" if values.get("status", "ok") == "ok" else "failed",
    )


def metadata_calls(meta: Mapping[str, Any], run_id: str = "", *, failed: bool = False) -> list[AgentCallSummary]:
    """The agent calls recorded in one output's (or, `failed`, one step failure's) metadata (plain values): an
    agent op's `flujo/...` keys, or an inline op's per-step table."""
    calls: list[AgentCallSummary] = []
    for record in cast(list[dict[str, Any]], meta.get(names.STEPS_JSON) or []):
        if record.get("model"):
            calls.append(_summary(record, run_id))
    if names.MODEL in meta:
        calls.append(
            _summary(
                {
                    "path": meta[names.STEP_PATH],
                    "model": meta[names.MODEL],
                    "model_source": meta[names.MODEL_SOURCE],
                    "requests": meta[names.REQUESTS],
                    "input_tokens": meta[names.INPUT_TOKENS],
                    "output_tokens": meta[names.OUTPUT_TOKENS],
                    "cost_usd": meta.get(names.COST_USD),
                    "price_source": meta.get(names.PRICE_SOURCE),
                    "usage_unknown": meta.get(names.USAGE_UNKNOWN),
                    "status": "failed" if failed else "ok",
                },
                run_id,
            )
        )
    return calls


COST_EVENTS = {DagsterEventType.STEP_OUTPUT, DagsterEventType.STEP_FAILURE}
"""The events whose metadata records agent calls: step outputs, and failures of steps that had charged some."""


def event_calls(event: DagsterEvent, run_id: str) -> list[AgentCallSummary]:
    """The agent calls recorded by one event: a step output's metadata, or a step failure's (`Failure`)."""
    if event.event_type == DagsterEventType.STEP_OUTPUT and event.step_output_data is not None:
        return metadata_calls({k: v.value for k, v in event.step_output_data.metadata.items()}, run_id)
    if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data is not None:
        failure = event.step_failure_data.user_failure_data
        if failure is not None:
            meta = {k: v.value for k, v in failure.metadata.items()}
            return metadata_calls(meta, run_id, failed=True)
    return []


def agent_calls(events: Iterable[DagsterEvent], run_id: str = "") -> tuple[AgentCallSummary, ...]:
    """Every agent call in `events` (a run's step outputs and failures), inline ones included, in event order."""
    calls: list[AgentCallSummary] = []
    for event in events:
        calls.extend(event_calls(event, run_id))
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
