"""Shared fixtures: a real, persistent Dagster instance in a temporary DAGSTER_HOME; no real LLM requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydantic_ai.models
import pytest
from dagster import DagsterInstance, instance_for_test

pydantic_ai.models.ALLOW_MODEL_REQUESTS = False


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
