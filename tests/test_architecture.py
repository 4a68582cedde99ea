"""Layering: the DSL and validation are pure; import-linter contracts hold; no imports inside functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_dsl_imports_neither_dagster_nor_pydantic_ai() -> None:
    loaded = _modules_after_import("flujo_dagster.dsl")
    assert "flujo_dagster.dsl" in loaded
    assert not {m for m in loaded if m == "dagster" or m.startswith("dagster.")}
    assert not {m for m in loaded if m == "pydantic_ai" or m.startswith("pydantic_ai.")}


def test_validation_imports_neither_dagster_nor_pydantic_ai() -> None:
    loaded = _modules_after_import("flujo_dagster.validation")
    assert "flujo_dagster.validation" in loaded
    assert "dagster" not in loaded and "pydantic_ai" not in loaded


def test_top_level_package_defers_dagster_until_used() -> None:
    loaded = _modules_after_import("flujo_dagster")
    assert "dagster" not in loaded
    code = "import sys, flujo_dagster; flujo_dagster.build_definitions; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 4 kept, 0 broken." in out.stdout
