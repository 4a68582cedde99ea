"""Shared fixtures: a real, persistent Dagster instance in a temporary DAGSTER_HOME; no real LLM requests. And the
one rule for tools that only the dev environment installs (`dg`, the dagster-* integrations)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pydantic_ai.models
import pytest
from dagster import DagsterInstance, instance_for_test

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False

HIGHEST_ENV = "FLUJO_TEST_HIGHEST"
"""Set to 1 by CI's second run, on the newest dagster the range allows (`.[test]` only): no dagster-* integration
release pins that dagster yet, so what needs one skips there. Everywhere else a missing one fails."""


def _not_installed(what: str, extra: str) -> NoReturn:
    """Skip on CI's highest run (FLUJO_TEST_HIGHEST=1); fail anywhere else, so a broken dev environment shows."""
    if os.environ.get(HIGHEST_ENV) == "1":
        pytest.skip(f"{what} is not installed: {HIGHEST_ENV}=1 (no release in the `{extra}` extra pins this dagster)")
    pytest.fail(
        f"{what} is not installed: install .[dev] (or .[{extra}]); only {HIGHEST_ENV}=1 skips this",
        pytrace=False,
    )


def dg_executable() -> Path:
    """The venv's `dg` (dagster-dg-cli, the `dg` extra), beside the running Python."""
    dg = Path(sys.executable).parent / "dg"
    if not dg.is_file():
        _not_installed(f"`dg` ({dg})", "dg")
    return dg


def require_module(module: str, *, extra: str) -> None:
    """An integration module (e.g. `dagster_postgres`, the `postgres` extra), importable in this environment."""
    if importlib.util.find_spec(module) is None:
        _not_installed(f"`{module}`", extra)


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    """A temporary DAGSTER_HOME with telemetry off (SQLite storage, the embedded default)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture
def instance(dagster_home: Path) -> Iterator[DagsterInstance]:
    """A persistent SQLite-backed instance rooted at `dagster_home` (what `dagster dev` would use)."""
    with instance_for_test(temp_dir=str(dagster_home)) as inst:
        yield inst
