"""`Pipeline` is generic over its context model: `run_pipeline(...).context`, `arun_pipeline(...)` and
`load_final_context(...)` give the user's model type under `mypy --strict`, with no assert or cast in user code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from dagster import DagsterInstance
from pydantic import BaseModel

from flujo_dagster import FlujoDagsterError, Pipeline, run_pipeline, step
from tests.fixtures.typed_context import Story, count_words, count_words_async, story

ROOT = Path(__file__).resolve().parents[1]
TYPED = Path("tests/fixtures/typed_context.py")
WRONG = Path("tests/fixtures/typed_context_wrong.py")


def test_mypy_strict_types_the_final_context_as_the_context_model() -> None:
    """The user script passes `mypy --strict`; its negative control (the same fields read into `str` variables)
    fails on exactly its marked lines. A context typed `BaseModel` fails the first, one typed `Any` the second."""
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--show-error-codes", str(TYPED), str(WRONG)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    errors = re.findall(r"^(\S+?):(\d+): error: (.*)$", checked.stdout, flags=re.MULTILINE)
    assert [e for e in errors if e[0] != str(WRONG)] == [], checked.stdout + checked.stderr
    marked = [n for n, line in enumerate(WRONG.read_text().splitlines(), 1) if "# wrong" in line]
    assert len(marked) == 2
    assert [int(line) for _, line, _ in errors] == marked, checked.stdout
    for _, _, message in errors:
        assert 'expression has type "int", variable has type "str"' in message


def test_the_typed_user_script_runs(instance: DagsterInstance) -> None:
    assert count_words(instance) == (3, 3)
    assert anyio.run(count_words_async, instance) == 2
    assert story.context is Story


def test_a_failed_run_has_no_final_context_and_its_context_names_the_failure(instance: DagsterInstance) -> None:
    class Ctx(BaseModel):
        x: int
        y: int = 0

    @step
    def y(x: int) -> int:
        raise ValueError(f"no y for {x}")

    result = run_pipeline(Pipeline("fails", context=Ctx, steps=[y]), {"x": 1}, instance=instance)
    assert not result.success and result.final_context is None
    with pytest.raises(FlujoDagsterError, match=rf"run {result.run_id} failed: step y: ValueError: no y for 1"):
        _ = result.context
    with pytest.raises(FlujoDagsterError, match="no y for 1"):
        result.raise_for_failure()
