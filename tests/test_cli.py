"""The real `flujo-dagster` console script, run as a subprocess from the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "flujo-dagster"
DAGSTER = Path(sys.executable).parent / "dagster"

BROKEN_FINDINGS = [
    "[V-CTX2] error at broken > step:outline: reads unknown key 'topik': it is not a field of Notes. "
    "Hint: did you mean 'topic'?",
    "[V-A1] error at broken > agent:summary: agent step has no model: neither the agent nor the step names one. "
    "Hint: build the agent with a model ('provider:model', defer_model_check=True) or pass model=",
]
DEFINITIONS_FINDINGS = [
    "[V-CTX2] error at counts > step:words: reads unknown key 'langauge': it is not a field of Counts. "
    "Hint: known keys: topic, words",
    "[V-TYPE] error at counts > step:words: returns str but writes key 'words', which holds int | None. "
    "Hint: return int | None, or change the context field",
]


def run(*args: str, home: Path | None = None, program: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    """Run the program from the repository root, offline: no provider key, the example's scripted model."""
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "FLUJO_DAGSTER_LIVE", "DAGSTER_HOME"}}
    if home is not None:
        env["DAGSTER_HOME"] = str(home)
    return subprocess.run(
        [str(program), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_console_script_is_installed() -> None:
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . in the venv"


def test_validate_example_definitions_exits_0() -> None:
    result = run("validate", "definitions")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 error(s), 0 warning(s)\n"


def test_validate_one_valid_pipeline_of_a_module_exits_0() -> None:
    result = run("validate", "tests.fixtures.invalid_pipeline:valid")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 error(s), 0 warning(s)\n"


def test_validate_module_with_errors_exits_4_and_prints_every_finding() -> None:
    result = run("validate", "tests.fixtures.invalid_pipeline")
    assert result.returncode == 4, result.stderr
    assert result.stdout.splitlines() == [*BROKEN_FINDINGS, "2 error(s), 0 warning(s)"]


def test_validate_module_whose_build_definitions_raises_exits_4_with_the_findings() -> None:
    result = run("validate", "tests.fixtures.broken_definitions")
    assert result.returncode == 4, result.stderr
    assert result.stdout.splitlines() == [*DEFINITIONS_FINDINGS, "2 error(s), 0 warning(s)"]


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("no_such_module", "Error: cannot import module 'no_such_module': No module named 'no_such_module'"),
        ("definitions:no_such_attr", "Error: module 'definitions' has no attribute 'no_such_attr'"),
        (
            "tests.fixtures.invalid_pipeline:not_a_pipeline",
            "Error: tests.fixtures.invalid_pipeline:not_a_pipeline is a str, not a flujo_dagster Pipeline",
        ),
        (":digest", "Error: expected MODULE[:ATTR], got ':digest'"),
    ],
)
def test_validate_usage_errors_exit_2(target: str, error: str) -> None:
    result = run("validate", target)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == error


def test_dagster_definitions_validate_fails_with_the_findings(dagster_home: Path) -> None:
    """What docs/validation.md promises: Dagster's own check fails the location and prints every finding."""
    module = "tests.fixtures.broken_definitions"
    result = run("definitions", "validate", "-m", module, home=dagster_home, program=DAGSTER)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    headline = "flujo_dagster.errors.ConfigurationError: flujo_dagster found 2 error(s) in the pipeline definitions:"
    assert headline in output
    for finding in DEFINITIONS_FINDINGS:
        assert f"  {finding}\n" in output


def test_run_digest_prints_run_id_and_final_context(dagster_home: Path) -> None:
    result = run("run", "definitions:digest", "--input", "topic=agents", home=dagster_home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run id: ")
    run_id = lines[0].removeprefix("run id: ")
    assert len(run_id) == 36
    assert lines[1].startswith("agent step digest > agent:draft: function:offline-digest (offline)")
    assert lines[2].startswith("agent step digest > agent:critique: function:offline-digest (offline)")
    assert lines[3] == "final context (Digest):"
    context = json.loads("\n".join(lines[4:]))
    assert context["topic"] == "agents"
    assert [s["id"] for s in context["sources"]] == ["s3", "s1", "s2"]
    assert context["critique"] == {"score": 8, "issues": [], "verdict": "publish"}
    assert context["report"].startswith("# Digest: agents\n")
    # the run is recorded on the instance in DAGSTER_HOME
    assert (dagster_home / "history" / "runs.db").is_file()


def test_run_without_required_input_exits_2_naming_the_field(dagster_home: Path) -> None:
    result = run("run", "definitions:digest", home=dagster_home)
    assert result.returncode == 2
    assert "run id:" not in result.stdout
    assert result.stderr.splitlines() == [
        "invalid run inputs for pipeline 'digest' (1 problem(s), checked with Digest; no step ran):",
        "  - topic: missing (a required input)",
        "Fix the inputs named above and run again. Pipeline 'digest' requires: topic; its other inputs have "
        "defaults: max_sources, sources, draft, critique, report.",
    ]


def test_run_with_badly_typed_input_exits_2_naming_the_field(dagster_home: Path) -> None:
    inputs = ("--input", "topic=agents", "--input", "max_sources=many")
    result = run("run", "definitions:digest", *inputs, home=dagster_home)
    assert result.returncode == 2
    assert result.stderr.splitlines()[:2] == [
        "invalid run inputs for pipeline 'digest' (1 problem(s), checked with Digest; no step ran):",
        "  - max_sources: Input should be a valid integer, unable to parse string as an integer (int_parsing; "
        "got 'many')",
    ]


def test_run_with_malformed_input_exits_2(dagster_home: Path) -> None:
    result = run("run", "definitions:digest", "--input", "topic", home=dagster_home)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "Error: --input takes key=value, got 'topic'"


def test_run_of_an_invalid_pipeline_exits_4_with_the_findings(dagster_home: Path) -> None:
    result = run("run", "tests.fixtures.invalid_pipeline:broken", "--input", "topic=x", home=dagster_home)
    assert result.returncode == 4, result.stderr
    assert result.stdout.splitlines() == [*BROKEN_FINDINGS, "2 error(s), 0 warning(s)"]
    assert "Traceback" not in result.stderr


def test_run_keeps_text_for_string_keys_and_parses_json_for_others(dagster_home: Path) -> None:
    inputs = ("--input", "topic=2024", "--input", "max_sources=1")
    result = run("run", "definitions:digest", *inputs, home=dagster_home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    context = json.loads("\n".join(lines[lines.index("final context (Digest):") + 1 :]))
    assert context["topic"] == "2024" and context["max_sources"] == 1


def test_costs_prints_each_agent_step_and_the_total(dagster_home: Path) -> None:
    ran = run("run", "definitions:digest", "--input", "topic=agents", home=dagster_home)
    assert ran.returncode == 0, ran.stderr
    run_id = ran.stdout.splitlines()[0].removeprefix("run id: ")
    result = run("costs", run_id, home=dagster_home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:4] for line in lines[1:-1]] == [
        [run_id[:8], "digest", ">", "agent:draft"],
        [run_id[:8], "digest", ">", "agent:critique"],
    ]
    costs = [Decimal(line.split()[-2]) for line in lines[1:-1]]
    assert all(c > 0 for c in costs) and all(line.endswith("offline") for line in lines[1:-1])
    assert lines[-1].startswith(f"total: ${sum(costs):.6f}, ")
    unknown = run("costs", "no-such-run", home=dagster_home)
    assert unknown.returncode == 2 and "'no-such-run' is not a run id" in unknown.stderr
