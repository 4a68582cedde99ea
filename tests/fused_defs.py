"""A pipeline whose inline group is fused (its keys travel as one bundle output): the group writes a pydantic
model key, an int key and an asset key; the expanded step after it fails while a marker file exists. Paths come
from environment variables, so that a re-execution behaves the same way. A reconstructable target."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import JobDefinition
from pydantic import BaseModel

from flujo_dagster import Pipeline, build_definitions, step
from flujo_dagster.dsl import Approval, Group

FAIL_MARKER = "FLUJO_TEST_FUSED_FAIL_MARKER"
CALL_LOG = "FLUJO_TEST_FUSED_CALL_LOG"


class Note(BaseModel):
    text: str
    words: int


class Doc(BaseModel):
    topic: str
    note: Note = Note(text="", words=0)
    size: int = 0
    summary: str = ""
    final: str = ""


@step
def note(topic: str) -> Note:
    with open(os.environ[CALL_LOG], "a") as log:
        log.write("note\n")
    return Note(text=topic.upper(), words=len(topic.split()))


@step
def size(note: Note) -> int:
    return note.words


@step
def summary(note: Note, size: int) -> str:
    return f"{note.text}:{size}"


@step
def final(note: Note, size: int, summary: str) -> str:
    if Path(os.environ[FAIL_MARKER]).exists():
        raise RuntimeError("final fails while the marker exists")
    return f"{note.text}|{size}|{summary}"  # a dict instead of a Note would fail here


fused = Pipeline(
    "fused",
    context=Doc,
    steps=[Group("prep", steps=[note, size, summary], inline=True), final],
    assets=("summary",),
)
fused_gated = Pipeline(
    "fused_gated",
    context=Doc,
    steps=[Group("prep", steps=[note, size], inline=True), Approval("review", show=["note"]), final],
)
"""An approval gate showing a key of a fused inline op (its value is taken out of the bundle)."""
defs = build_definitions(pipelines=[fused, fused_gated])


def fused_job() -> JobDefinition:
    return defs.resolve_job_def("fused")
