"""Provenance that follows the content: every asset downstream of a decided approval gate carries the gate's
record (`flujo/approvals`), and the audit trail shows each edit's value before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import DagsterInstance, JsonMetadataValue, execute_job, reconstructable

from flujo_dagster.adapter.control.approvals import decide, resume
from flujo_dagster.adapter.control.audit import MAX_EDITS_SHOWN, AuditEvent, audit_trail
from flujo_dagster.adapter.ops.review import COMMENT_CHARS, gate_entry
from flujo_dagster.runtime.approvals import payload_hash
from tests.provenance_defs import provenanced_job
from tests.test_asset_review import inputs, materialized
from tests.test_cli import run as run_cli

EDITED = "edited \u009b2J draft"
"""An edit with a C1 control (CSI) in it: JSON keeps it raw, the terminal must not get it."""


def approvals(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    value = metadata["flujo/approvals"]
    assert isinstance(value, JsonMetadataValue)
    return [{k: v for k, v in entry.items() if k != "at"} for entry in value.value]  # type: ignore[union-attr]


def test_assets_downstream_of_decided_gates_carry_each_record_and_the_audit_shows_the_edit(
    instance: DagsterInstance, dagster_home: Path
) -> None:
    job = reconstructable(provenanced_job)
    with execute_job(job, instance=instance, run_config=inputs("provenanced", "otters")) as first:
        assert first.success  # parked at review
        parked = first.run_id
    before = materialized(instance, parked)
    assert set(before) == {"provenanced/outline"}
    assert "flujo/approvals" not in before["provenanced/outline"]  # upstream of every gate
    decide(parked, verdict="approve", by="ana", comment="tightened", values={"draft": EDITED}, instance=instance)
    second = resume(parked, job=job, instance=instance)  # passes review, parks at final

    review = {
        "gate": "review",
        "path": "provenanced > approval:review",
        "verdict": "approve",
        "by": "ana",
        "comment": "tightened",
        "payload_hash": payload_hash({"draft": "draft from outline of otters"}),
        "edited": ["draft"],
        "run_id": second,
    }
    between = materialized(instance, second)
    assert set(between) == {"provenanced/title"}  # the gate before it decided; the one after it parked
    assert approvals(between["provenanced/title"]) == [review]

    decide(second, verdict="approve", by="bo", instance=instance)
    third = resume(second, job=job, instance=instance)
    after = materialized(instance, third)
    assert set(after) == {"provenanced/summary", "provenanced/report", "provenanced/final_context"}
    final = {
        "gate": "final",
        "path": "provenanced > approval:final",
        "verdict": "approve",
        "by": "bo",
        "comment": "",
        "payload_hash": payload_hash({"summary": f"summary: {EDITED}"}),
        "edited": [],
        "run_id": third,
    }
    # review ran in the second run (the third reads its outputs from there), final in the third
    assert approvals(after["provenanced/report"]) == [review, final]
    assert approvals(after["provenanced/summary"]) == [review, final]  # shown by final: its own record last
    assert after["provenanced/summary"]["flujo/approval/gate"].value == "final"
    assert approvals(after["provenanced/final_context"]) == [review, final]
    assert after["provenanced/report"]["flujo/approvals"].value[0]["at"]  # type: ignore[index]

    (approved,) = [e for e in audit_trail(third, instance=instance) if e.kind == "approved" and e.gate == "review"]
    assert approved.record["edits"] == {"draft": {"before": '"draft from outline of otters"', "after": f'"{EDITED}"'}}
    listed = run_cli("audit", third, home=dagster_home)
    assert listed.returncode == 0, listed.stderr
    assert '    draft: "draft from outline of otters" -> "edited 2J draft"' in listed.stdout.splitlines()
    assert "\u009b" not in listed.stdout


def test_an_audit_events_malformed_edits_are_skipped_never_raised() -> None:
    def event(edits: object) -> AuditEvent:
        return AuditEvent(
            run_id="r", kind="approved", gate="g", message="by ana", timestamp=0.0, record={"edits": edits}
        )

    assert event(None).edits() == []
    assert event(["draft"]).edits() == []
    assert event({"draft": "x", "a": {"before": 1, "after": "2"}, "b": {"before": "1"}}).edits() == []
    assert event({"draft": {"before": "1", "after": "2"}}).edits() == [("draft", "1", "2")]
    long = event({"k": {"before": "x" * 10_000, "after": ""}}).edits()
    assert len(long[0][1]) <= 600 and long[0][1].endswith("(10000 characters)")
    assert len(event({f"k{i}": {"before": "", "after": ""} for i in range(1_000)}).edits()) == MAX_EDITS_SHOWN


def test_a_gate_record_on_an_asset_is_size_capped_and_reads_any_metadata() -> None:
    entry = gate_entry(
        {"flujo/approval/comment": "c" * 10_000, "flujo/approval/edited": "a, b", "flujo/step_path": 5}, "r"
    )
    assert len(str(entry["comment"])) <= COMMENT_CHARS and entry["edited"] == ["a", "b"] and entry["path"] == ""
    assert gate_entry({}, "r") == {
        "gate": "",
        "path": "",
        "verdict": "",
        "by": "",
        "at": "",
        "comment": "",
        "payload_hash": "",
        "edited": [],
        "run_id": "r",
    }
