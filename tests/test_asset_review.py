"""Asset materializations carry what a reviewer needs: a bounded preview, the type, the cost, tokens and models of
the steps that produced the value, and the approval record of the gate that approved it."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    JsonMetadataValue,
    MarkdownMetadataValue,
    MetadataValue,
    TableMetadataValue,
    TableRecord,
    execute_job,
    reconstructable,
)
from pydantic import BaseModel

from flujo_dagster.adapter.control.approvals import decide, resume
from flujo_dagster.adapter.ops.review import PREVIEW_CHARS, TABLE_ROWS, preview
from flujo_dagster.runtime.approvals import payload_hash
from tests.review_defs import looped_review_job, reviewed_job

ANSWER = "A draft about otters, in three short words."


def inputs(pipeline: str, topic: str) -> dict[str, Any]:
    return {"ops": {f"{pipeline}_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": topic}}}}}}}


def materialized(instance: DagsterInstance, run_id: str) -> dict[str, dict[str, MetadataValue]]:
    """Each asset materialized in `run_id` (by its key's user string) and its metadata."""
    found: dict[str, dict[str, MetadataValue]] = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        event = record.dagster_event
        assert event is not None
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        found[materialization.asset_key.to_user_string()] = dict(materialization.metadata)
    return found


def step_output_metadata(instance: DagsterInstance, run_id: str, step_key: str) -> dict[str, Any]:
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        event = record.dagster_event
        if event is not None and event.step_key == step_key and event.step_output_data is not None:
            return {k: v.value for k, v in event.step_output_data.metadata.items()}
    raise AssertionError(f"no output of {step_key} in run {run_id}")


def values(metadata: dict[str, MetadataValue]) -> dict[str, Any]:
    return {k: v.value for k, v in metadata.items()}


def test_materializations_carry_preview_type_cost_models_and_the_approval(instance: DagsterInstance) -> None:
    job = reconstructable(reviewed_job)
    tags = {"dagster/user": "requester"}
    with execute_job(job, instance=instance, run_config=inputs("reviewed", "otters"), tags=tags) as parked_run:
        assert parked_run.success  # a park is not a failure
        parked = parked_run.run_id
    decide(parked, verdict="approve", by="alice", comment="fine", instance=instance)
    resumed = resume(parked, job=job, instance=instance)
    write = step_output_metadata(instance, parked, "reviewed_graph.write")
    assert write["flujo/cost_usd"] > 0

    before = materialized(instance, parked)
    assert set(before) == {"reviewed/sources"}  # the run parked at the gate, before draft
    sources = before["reviewed/sources"]
    table = sources["flujo/preview"]
    assert isinstance(table, TableMetadataValue)
    assert [c.name for c in table.schema.columns] == ["title", "score"]
    assert table.records == [TableRecord({"title": f"otters {i}", "score": i}) for i in range(3)]
    assert values(sources) | {"flujo/preview": None, "flujo/path": None} == {
        "flujo/preview": None,
        "flujo/path": None,
        "flujo/type": "list[Source]",
        "flujo/total_cost_usd": 0.0,
        "flujo/upstream_cost_usd": 0.0,
        "flujo/total_input_tokens": 0,
        "flujo/total_output_tokens": 0,
        "flujo/models": "(none)",
        "flujo/produced_by": "(no agent step)",
    }

    after = materialized(instance, resumed)
    assert set(after) == {
        "reviewed/draft",
        "reviewed/stats",
        "reviewed/summary",
        "reviewed/report",
        "reviewed/final_context",
    }
    draft = after["reviewed/draft"]
    assert draft["flujo/preview"] == MarkdownMetadataValue(ANSWER)
    draft_values = values(draft)
    unstable = {"flujo/approval/at", "flujo/path", "flujo/approvals"}
    assert {k: draft_values[k] for k in draft_values if k not in unstable} == {
        "flujo/step_path": "reviewed > approval:review",
        "flujo/preview": ANSWER,
        "flujo/type": "str",
        "flujo/total_cost_usd": write["flujo/cost_usd"],
        "flujo/upstream_cost_usd": write["flujo/cost_usd"],
        "flujo/total_input_tokens": write["flujo/input_tokens"],
        "flujo/total_output_tokens": write["flujo/output_tokens"],
        "flujo/models": "function:reviewer",
        "flujo/produced_by": "reviewed > agent:write",
        "flujo/approval/gate": "review",
        "flujo/approval/verdict": "approve",
        "flujo/approval/by": "alice",
        "flujo/approval/comment": "fine",
        "flujo/approval/payload_hash": payload_hash({"draft": ANSWER}),
        "flujo/approval/edited": "",
    }
    record = {
        "gate": "review",
        "path": "reviewed > approval:review",
        "verdict": "approve",
        "by": "alice",
        "at": draft_values["flujo/approval/at"],
        "comment": "fine",
        "payload_hash": payload_hash({"draft": ANSWER}),
        "edited": [],
        "run_id": resumed,
    }
    assert draft_values["flujo/approvals"] == [record]  # the gate's own record, in the same shape as downstream
    stats = after["reviewed/stats"]
    assert stats["flujo/preview"] == JsonMetadataValue({"sources": 3, "words": 8})
    assert stats["flujo/type"].value == "dict[str, int]"
    assert stats["flujo/total_cost_usd"].value == 0.0  # its own steps made no agent call
    assert stats["flujo/upstream_cost_usd"].value == write["flujo/cost_usd"]  # the draft it reads did
    assert not any(k.startswith("flujo/approval/") for k in stats)  # not the value the gate approved,
    assert stats["flujo/approvals"].value == [record]  # but made from it: it carries the gate's record
    assert "flujo/approvals" not in before["reviewed/sources"]  # upstream of the gate
    report = after["reviewed/report"]
    assert report["flujo/preview"] == MarkdownMetadataValue(f"# Report\n\nsummary: {ANSWER}")
    final = values(after["reviewed/final_context"])
    assert final["flujo/type"] == "Brief"
    assert final["flujo/total_cost_usd"] == write["flujo/cost_usd"]  # the whole run chain
    assert final["flujo/models"] == "function:reviewer"


def test_an_asset_forwarded_by_a_loop_join_carries_the_approval_of_the_gate_inside(instance: DagsterInstance) -> None:
    job = reconstructable(looped_review_job)
    config = inputs("looped_review", "otters")
    with execute_job(job, instance=instance, run_config=config, raise_on_error=False) as parked_run:
        assert parked_run.success  # a park is not a failure
        parked = parked_run.run_id
    decide(parked, verdict="approve", by="alice", instance=instance)
    resumed = resume(parked, job=job, instance=instance)
    write = step_output_metadata(instance, parked, "looped_review_graph.refine__i1__write")
    draft = values(materialized(instance, resumed)["looped_review/draft"])
    assert "flujo/step_path" not in draft  # produced by the loop's join, not by the gate
    (record,) = draft["flujo/approvals"]  # the gate in iteration 1 of the loop, upstream of the loop's join
    assert (record["gate"], record["path"]) == (
        "refine__i1__sign_off",
        "looped_review > loop:refine > i1 > approval:sign_off",
    )
    assert {k: v for k, v in draft.items() if k not in {"flujo/approval/at", "flujo/path", "flujo/approvals"}} == {
        "flujo/preview": ANSWER,
        "flujo/type": "str",
        "flujo/total_cost_usd": write["flujo/cost_usd"],
        "flujo/upstream_cost_usd": write["flujo/cost_usd"],
        "flujo/total_input_tokens": write["flujo/input_tokens"],
        "flujo/total_output_tokens": write["flujo/output_tokens"],
        "flujo/models": "function:reviewer",
        "flujo/produced_by": "looped_review > loop:refine > i1 > agent:write",
        "flujo/approval/gate": "refine__i1__sign_off",
        "flujo/approval/verdict": "approve",
        "flujo/approval/by": "alice",
        "flujo/approval/comment": "",
        "flujo/approval/payload_hash": payload_hash({"draft": ANSWER}),
        "flujo/approval/edited": "",
    }


class Row(BaseModel):
    name: str
    tags: list[str]


class When(BaseModel):
    row: Row
    day: date
    ratio: float


def test_previews_are_bounded() -> None:
    long = "x" * (PREVIEW_CHARS + 1_000)
    assert preview(long, str) == MarkdownMetadataValue(
        "x" * PREVIEW_CHARS + f"... ({PREVIEW_CHARS + 1_000} characters)"
    )
    assert preview("", str) == MarkdownMetadataValue("*(empty)*")
    rows = [Row(name=f"r{i}", tags=["a", "b"]) for i in range(TABLE_ROWS + 5)]
    table = preview(rows, list[Row])
    assert isinstance(table, TableMetadataValue)
    assert len(table.records) == TABLE_ROWS
    assert table.records[0] == TableRecord({"name": "r0", "tags": '["a", "b"]'})
    assert preview({"a": [1, 2]}, dict[str, list[int]]) == JsonMetadataValue({"a": [1, 2]})
    assert preview(3, int) == MarkdownMetadataValue("```json\n3\n```")
    assert preview([Decimal("1.5"), Decimal("2")], list[Decimal]) == JsonMetadataValue(["1.5", "2"])
    assert preview({"x": float("nan")}, dict[str, float]) == MarkdownMetadataValue('```json\n{\n  "x": NaN\n}\n```')
    table = preview([When(row=Row(name="a", tags=[]), day=date(2024, 1, 31), ratio=float("inf"))], list[When])
    assert isinstance(table, TableMetadataValue)
    assert table.records == [TableRecord({"row": '{"name": "a", "tags": []}', "day": "2024-01-31", "ratio": "inf"})]
    big = preview(list(range(5_000)), list[int])
    assert isinstance(big, MarkdownMetadataValue)
    text = big.md_str or ""
    assert text.startswith("```json\n[\n  0,\n  1,") and text.endswith("characters)\n```")
    assert len(text) < PREVIEW_CHARS + 100
