"""The example `dg` project as a `dg` user drives it: `dg list defs` from the project's directory (no PYTHONPATH
to the project: its package sits at the project root), and `dg scaffold defs flujo_dagster.FlujoPipelineComponent`
writing a `defs.yaml` that `dg check yaml` accepts, with a placeholder pipeline `dg check defs` names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import dg_executable

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dg_digest"
TYPE = "flujo_dagster.FlujoPipelineComponent"


def dg(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """The venv's `dg` in `cwd`: no DAGSTER_HOME (an ephemeral instance), PYTHONPATH only to this checkout of
    flujo_dagster (the venv's editable install may be another checkout), never to the example project."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "PYTHONPATH")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [str(dg_executable()), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(run: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = run.communicate(timeout=300)
    return run.returncode, out, err


def test_dg_list_defs_works_from_the_example_directory() -> None:
    code, out, err = finished(dg("list", "defs", "--json", cwd=EXAMPLE))
    assert code == 0, err
    listed = json.loads(out)
    assert [j["name"] for j in listed["jobs"]] == ["dg_digest"]
    assert {s["name"] for s in listed["sensors"]} == {"flujo_costs"}
    assert "examples/dg_digest/report" in {a["asset_key"] for a in listed["assets"]}


def test_dg_scaffold_defs_writes_yaml_that_dg_check_accepts(tmp_path: Path) -> None:
    project = tmp_path / "dg_digest"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    params = json.dumps({"pipeline": "dg_digest.pipelines:digest"})
    scaffolds = [
        dg("scaffold", "defs", TYPE, "placeholder", cwd=project),
        dg("scaffold", "defs", TYPE, "given", "--json-params", params, cwd=project),
    ]
    for run in scaffolds:
        code, out, err = finished(run)
        assert code == 0, out + err
    defs = project / "dg_digest" / "defs"
    placeholder = (defs / "placeholder" / "defs.yaml").read_text()
    assert f"type: {TYPE}" in placeholder
    assert "  # Replace with the import path of your flujo_dagster Pipeline" in placeholder
    assert "  pipeline: my_project.pipelines:my_pipeline\n" in placeholder
    assert "  pipeline: dg_digest.pipelines:digest\n" in (defs / "given" / "defs.yaml").read_text()
    shutil.rmtree(defs / "given")  # the same pipeline twice would be two jobs of one name
    checks = {"yaml": dg("check", "yaml", cwd=project), "defs": dg("check", "defs", cwd=project)}
    code, out, err = finished(checks["yaml"])
    assert code == 0, out + err
    assert "All component YAML validated successfully." in out
    code, out, err = finished(checks["defs"])
    assert code == 1  # until the placeholder is replaced, with a message naming it
    assert "cannot import module 'my_project.pipelines'" in out + err
