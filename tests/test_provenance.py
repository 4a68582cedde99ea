"""Provenance that follows the content: every asset downstream of a decided approval gate carries the gate's
record (`flujo/approvals`), and the audit trail shows each edit's value before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    JsonMetadataValue,
    MetadataValue,
    ReexecutionOptions,
    execute_job,
    reconstructable,
)

from flujo_dagster.adapter.control.approvals import decide, resume
from flujo_dagster.adapter.control.audit import MAX_EDITS_SHOWN, AuditEvent, audit_trail
from flujo_dagster.adapter.ops.review import COMMENT_CHARS, gate_entry
from flujo_dagster.config import INBOX_URL_ENV, inbox_gate_url
from flujo_dagster.runtime.approvals import payload_hash
from tests.approval_defs import REQUEST_LOG, gated_job
from tests.provenance_defs import branched_job, mapped_job, provenanced_job
from tests.test_approvals import INPUTS
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


def test_a_re_execution_whose_content_skipped_the_gate_carries_no_ancestors_approval(instance: DagsterInstance) -> None:
    """Anyone may re-execute a run in the UI, with other inputs: a full re-execution of an approved run where the
    branch now skips the gate publishes content no reviewer saw, and must not carry the ancestor's approval."""
    job = reconstructable(branched_job)
    config = {"ops": {"branched_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}}}
    with execute_job(job, instance=instance, run_config=config) as first:
        assert first.success
    decide(first.run_id, verdict="approve", by="ana", comment="ok for otters", instance=instance)
    approved = resume(first.run_id, job=job, instance=instance)
    (record,) = approvals(materialized(instance, approved)["branched/report"])
    assert (record["by"], record["comment"], record["run_id"]) == ("ana", "ok for otters", approved)

    evil = {"topic": "evil content", "risky": False}
    other = {"ops": {"branched_graph": {"ops": {"flujo_inputs": {"config": {"inputs": evil}}}}}}
    options = ReexecutionOptions(parent_run_id=approved)  # every step, with other inputs
    with execute_job(job, instance=instance, run_config=other, reexecution_options=options) as again:
        assert again.success
    report = materialized(instance, again.run_id)["branched/report"]
    assert "evil content" in str(report["flujo/preview"].value)
    assert "flujo/approvals" not in report  # the gate did not run for this content: no approval travels with it


def test_an_asset_after_a_map_carries_each_elements_approval_from_the_run_that_decided_it(
    instance: DagsterInstance,
) -> None:
    """Elements of a gated Map decided in different resumes: the asset after the Map carries every element's
    record, each from the run where that element's gate decided (a resume that ran only some elements does not
    hide the others')."""
    job = reconstructable(mapped_job)
    config = {"ops": {"mapped_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}}}
    with execute_job(job, instance=instance, run_config=config) as first:
        assert first.success  # every element parked
    gates = [f"each__check[i{i}]" for i in range(3)]
    decide(first.run_id, gate=gates[1], verdict="approve", by="ana", values={"draft": "b!"}, instance=instance)
    second = resume(first.run_id, job=job, instance=instance)  # i1 goes on; i0, i2 park again
    for gate in (gates[0], gates[2]):
        decide(second, gate=gate, verdict="approve", by="bo", instance=instance)
    third = resume(second, job=job, instance=instance)
    report = materialized(instance, third)["mapped/report"]
    assert "b!" in str(report["flujo/preview"].value)
    assert sorted((r["gate"], r["by"], r["run_id"], tuple(r["edited"])) for r in approvals(report)) == [
        (gates[0], "bo", third, ()),
        (gates[1], "ana", second, ("draft",)),
        (gates[2], "bo", third, ()),
    ]


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


# --- links to the reviewers' inbox -----------------------------------------------------------------------------


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the `gated` example's scripted agent logs its prompts to."""
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    return log


def park_gated(instance: DagsterInstance) -> tuple[str, dict[str, Any]]:
    """Park the `gated` example; its tags and the metadata of its request (the park's engine event)."""
    with execute_job(reconstructable(gated_job), instance=instance, run_config=INPUTS) as result:
        assert result.success  # parked
        run_id = result.run_id
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.tags["flujo/parked"] == "true"
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.event_specific_data if record.dagster_event is not None else None
        metadata = dict(getattr(data, "metadata", None) or {})
        if "flujo/parked" in metadata:
            return run_id, {"tags": dict(run.tags), "metadata": metadata, "message": record.dagster_event.message}  # type: ignore[union-attr]
    raise AssertionError("no park event")


def test_a_parked_run_links_its_gates_inbox_page_when_an_inbox_is_configured(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INBOX_URL_ENV, "https://inbox.example.com")
    run_id, parked = park_gated(instance)
    page = f"https://inbox.example.com/gates/{run_id}/review"
    assert page == inbox_gate_url(run_id, "review")
    assert parked["tags"]["flujo/inbox/review"] == page  # the run page shows it
    assert parked["metadata"]["flujo/approval/inbox"] == MetadataValue.url(page)  # the request links it
    assert page in parked["message"]


def test_a_parked_run_has_no_inbox_link_when_no_inbox_is_configured(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INBOX_URL_ENV, raising=False)
    _, parked = park_gated(instance)
    assert not [t for t in parked["tags"] if t.startswith("flujo/inbox")]
    assert "flujo/approval/inbox" not in parked["metadata"] and "inbox" not in parked["message"]
    assert "flujo/approval/commands" in parked["metadata"]  # the request itself is still there


def test_a_bad_inbox_url_adds_no_link_and_never_stops_the_gate(
    instance: DagsterInstance, requests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INBOX_URL_ENV, "javascript:alert(1)")
    _, parked = park_gated(instance)  # parked as usual
    assert not [t for t in parked["tags"] if t.startswith("flujo/inbox")]
    assert "flujo/approval/inbox" not in parked["metadata"]
