"""What a gate's decision rests on, gathered from the instance: the decision records of every run of the proven
chain with the current run's inputs (their tags and the full records `decide` appended to their event logs, which
nobody can rewrite), the runs a decision may have been made on (those parked at the gate), and the requester."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRun

from flujo_dagster.adapter.control.audit import run_audit
from flujo_dagster.adapter.control.chain import chain_of_run, same_inputs, same_run
from flujo_dagster.names import REQUEST_PREFIX, USER_TAG
from flujo_dagster.runtime.approvals import Binding, Decision, Requester, decision_tags, parse_decision

__all__ = ["Evidence", "evidence"]


@dataclass(frozen=True)
class Evidence:
    """The decision records a gate may count ((where, JSON) pairs, own tags first), what they must be bound
    to, and who the requester is."""

    records: tuple[tuple[str, str], ...]
    binding: Binding
    requester: Requester


def evidence(instance: DagsterInstance, run: DagsterRun, gates: Collection[str]) -> dict[str, Evidence]:
    """The evidence for each of `gates` in `run` (as stored now: pass the run re-read from the instance). A
    re-execution's own tags add records but never hide one of its chain: every copy is read."""
    same = same_inputs(instance, run)
    ids = {r.run_id for r in same}
    # the rest of the chain with these inputs (siblings, later re-executions): only their rejections count here
    others = [r for r in chain_of_run(instance, run) if r.run_id not in ids and same_run(r, run)]
    requester = Requester(run_id=same[-1].run_id, user=same[-1].tags.get(USER_TAG))
    records: dict[str, list[tuple[str, str]]] = {gate: [] for gate in gates}
    for member in [*same, *others]:  # a tag copied from run to run keeps its key: what is ignored is reported once
        found = _records_of(instance, member, records)
        for gate, pairs in found.items():
            records[gate].extend(p for p in pairs if member.run_id in ids or _rejection(p[1]))
    return {
        gate: Evidence(
            records=tuple(found),
            binding=Binding(
                gate=gate,
                runs=frozenset(r.run_id for r in same if REQUEST_PREFIX + gate in r.tags),
                rejecting=frozenset(r.run_id for r in others if REQUEST_PREFIX + gate in r.tags),
            ),
            requester=requester,
        )
        for gate, found in records.items()
    }


def _records_of(
    instance: DagsterInstance, member: DagsterRun, gates: Collection[str]
) -> dict[str, list[tuple[str, str]]]:
    """The decision records of each of `gates` in `member`: its tags, and the full records `decide` appended to its
    event log."""
    found: dict[str, list[tuple[str, str]]] = {gate: sorted(decision_tags(member.tags, gate).items()) for gate in gates}
    for event in run_audit(instance, member.run_id):
        record = event.record.get("record")
        if event.kind == "decision" and event.gate in found and isinstance(record, dict):
            found[event.gate].append((f"the decision event of run {member.run_id}", json.dumps(record)))
    return found


def _rejection(raw: str) -> bool:
    """Whether decision record `raw` is a readable rejection (never raises)."""
    parsed = parse_decision(raw)
    return isinstance(parsed, Decision) and parsed.verdict == "reject"
