"""One code location, several flujo definitions: `build_definitions` results merge with `Definitions.merge` and
`FlujoPipelineComponent`s share a location (one set of default resources, one decide job, one approvals sensor
serving every flujo job of the location), a conflict between components is a `ConfigurationError` naming the key
and both components, and the `flujo_costs` sensor tags every finished run with its cost, tokens and calls."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterInvariantViolationError,
    Definitions,
    FloatMetadataValue,
    build_sensor_context,
    job,
    load_from_defs_folder,
    op,
)
from pydantic_ai.models.test import TestModel

from flujo_dagster import AgentRuntime, ApprovalSettings, ConfigurationError, build_definitions, decide
from flujo_dagster.adapter.compile.definitions import default_resources
from flujo_dagster.adapter.control.run_costs import cost_band, flujo_jobs
from flujo_dagster.names import (
    APPROVALS_SENSOR,
    COSTS_SENSOR,
    DECIDE_JOB,
    RESUME_NEEDED_TAG,
    RUN_CALLS_TAG,
    RUN_COST_BAND_TAG,
    RUN_COST_TAG,
    RUN_TOKENS_TAG,
    USER_TAG,
)
from tests.location_defs import (
    DRAFTED_INPUTS,
    INPUTS,
    costed,
    drafted,
    failing,
    gated,
    gated_outside,
    gated_two,
    plain,
    runtime,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:`parse_obj_as` is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
RESOURCES = {"agent_runtime": runtime}


@op
def hello() -> None:
    """A plain op."""


@job
def plain_job() -> None:
    hello()


def merged() -> Definitions:
    """Two results with approval gates in both and a plain Dagster job, merged as a user merges them."""
    first = build_definitions(pipelines=[costed, gated], resources=RESOURCES)
    second = build_definitions(pipelines=[failing, plain], resources=RESOURCES)
    return Definitions.merge(first, second, Definitions(jobs=[plain_job]))


def test_two_build_definitions_results_merge_into_one_location() -> None:
    first = build_definitions(pipelines=[costed, gated], resources=RESOURCES)
    second = build_definitions(pipelines=[failing, drafted], resources=RESOURCES)
    third = build_definitions(pipelines=[plain], resources={**RESOURCES, "approval_settings": ApprovalSettings()})
    repo = Definitions.merge(first, second, third, Definitions(jobs=[plain_job])).get_repository_def()
    jobs = {j.name for j in repo.get_all_jobs()} - {"__ASSET_JOB"}  # Dagster's implicit job of all assets
    assert jobs == {"costed", "gated_cost", "failing", "drafted", "plain", DECIDE_JOB, "plain_job"}
    assert sorted(s.name for s in repo.sensor_defs) == [APPROVALS_SENSOR, COSTS_SENSOR]
    # not the decide job nor a plain job; Dagster's implicit asset job is one when it holds a flujo asset
    assert flujo_jobs(repo) == {"costed", "gated_cost", "failing", "drafted", "plain", "__ASSET_JOB"}
    assert first.resources is not None and second.resources is not None and third.resources is not None
    for key in ("flujo_io_manager", "budget_ledger", "approval_settings", "price_book", "agent_runtime"):
        assert first.resources[key] is second.resources[key] is third.resources[key], key


def test_the_approvals_sensor_serves_the_jobs_of_every_result_of_the_location(instance: DagsterInstance) -> None:
    """The sensor comes from the first result; the parked run is of a job of the second. It reports the run (parked
    in process, so only `flujo-dagster resume` can resume it): it served it. A job outside the location is left."""
    first = build_definitions(pipelines=[costed, gated], resources=RESOURCES)
    other = build_definitions(pipelines=[failing, gated_two], resources=RESOURCES)
    defs = Definitions.merge(first, other)
    outside = build_definitions(pipelines=[gated_outside], resources=RESOURCES)
    parked: dict[str, str] = {}
    for name, source in (("gated_two", defs), ("gated_outside", outside)):
        job = source.resolve_job_def(name)
        result = job.execute_in_process(instance=instance, run_config=INPUTS, tags={USER_TAG: "requester"})
        decide(result.run_id, verdict="approve", by="reviewer", instance=instance)
        parked[name] = result.run_id
    sensor = first.resolve_sensor_def(APPROVALS_SENSOR)
    assert sensor is defs.resolve_sensor_def(APPROVALS_SENSOR)
    sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    served = instance.get_run_by_id(parked["gated_two"])
    left = instance.get_run_by_id(parked["gated_outside"])
    assert served is not None and RESUME_NEEDED_TAG in served.tags
    assert left is not None and RESUME_NEEDED_TAG not in left.tags


def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, components: dict[str, str]) -> Path:
    """A `dg` project in `tmp_path` with a `FlujoPipelineComponent` per entry (its folder: its attributes)."""
    module = f"loc_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    (root / "src" / module / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[project]\nname = "{module}"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        f'[tool.dg.project]\nroot_module = "{module}"\n'
    )
    (root / "src" / module / "__init__.py").write_text("")
    (root / "src" / module / "defs" / "__init__.py").write_text("")
    for folder, attributes in components.items():
        (root / "src" / module / "defs" / folder).mkdir()
        yaml = f"type: flujo_dagster.FlujoPipelineComponent\n\nattributes:\n{attributes}"
        (root / "src" / module / "defs" / folder / "defs.yaml").write_text(yaml)
    monkeypatch.syspath_prepend(str(root / "src"))
    return root / "src" / module


FACTORY = "  agent_runtime: tests.location_defs:make_runtime\n"


def test_several_components_share_one_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance
) -> None:
    """Two components naming the same runtime factory (called once) and giving the same prices."""
    prices = '  prices:\n    "openai:gpt-5-mini": {input_per_mtok: "0.25", output_per_mtok: "2.00"}\n'
    src = project(
        tmp_path,
        monkeypatch,
        {
            "one": f"  pipeline: tests.location_defs:costed\n{FACTORY}{prices}",
            "two": f"  pipeline: tests.location_defs:gated\n{FACTORY}{prices}",
            "three": f"  pipeline: tests.location_defs:failing\n{FACTORY}{prices}",
        },
    )
    defs = load_from_defs_folder(path_within_project=src)
    repo = defs.get_repository_def()
    assert flujo_jobs(repo) == {"costed", "gated_cost", "failing"}
    assert sorted(s.name for s in repo.sensor_defs) == [APPROVALS_SENSOR, COSTS_SENSOR]
    assert defs.resolve_job_def("costed").execute_in_process(instance=instance, run_config=INPUTS).success


@pytest.mark.parametrize(
    ("second", "key"),
    [
        ('  prices:\n    "openai:gpt-5-mini": {input_per_mtok: "9", output_per_mtok: "9"}\n', "price_book"),
        ("  agent_runtime: tests.location_defs:other_runtime\n", "agent_runtime"),
    ],
)
def test_components_that_conflict_name_the_key_and_both_components(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str, key: str
) -> None:
    src = project(
        tmp_path,
        monkeypatch,
        {
            "alpha": f"  pipeline: tests.location_defs:costed\n{FACTORY}",
            "beta": f"  pipeline: tests.location_defs:failing\n{FACTORY if key != 'agent_runtime' else ''}{second}",
        },
    )
    with pytest.raises(Exception) as raised:
        load_from_defs_folder(path_within_project=src)
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    found = [e for e in chain if isinstance(e, ConfigurationError)]
    assert found, chain
    message = str(found[0])
    assert f"resource {key!r}" in message
    assert "alpha" in message and "beta" in message
    assert "one resource per key" in message
    if key == "agent_runtime":  # what differs lies outside the runtimes' reprs: the message names it
        assert "(model object function:metered; prices for ['function:metered'])" in message
        assert "AgentRuntime AgentRuntime" not in message


def costs(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return {k: run.tags[k] for k in (RUN_COST_TAG, RUN_TOKENS_TAG, RUN_CALLS_TAG, RUN_COST_BAND_TAG) if k in run.tags}


def test_every_finished_run_is_tagged_with_its_cost(instance: DagsterInstance) -> None:
    """Success (two agent calls), failure after a charged call, a park at a gate (ends SUCCESS); a launch tag that
    claims a cost is overwritten; a plain job's run is left untagged; a second tick writes nothing."""
    defs = merged()
    forged = {RUN_COST_TAG: "0.000000", RUN_COST_BAND_TAG: "0"}
    runs = {
        name: defs.resolve_job_def(name)
        .execute_in_process(instance=instance, run_config=INPUTS, raise_on_error=False, tags=forged)
        .run_id
        for name in ("costed", "failing", "gated_cost")
    }
    runs["plain_job"] = defs.resolve_job_def("plain_job").execute_in_process(instance=instance).run_id
    sensor = defs.resolve_sensor_def(COSTS_SENSOR)
    first = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))
    assert costs(instance, runs["costed"]) == {
        RUN_COST_TAG: "0.000120",  # 2 x (40 input x $1 + 10 output x $2 per million tokens)
        RUN_TOKENS_TAG: "100",
        RUN_CALLS_TAG: "2",
        RUN_COST_BAND_TAG: "<0.01",
    }
    one_call = {RUN_COST_TAG: "0.000060", RUN_TOKENS_TAG: "50", RUN_CALLS_TAG: "1", RUN_COST_BAND_TAG: "<0.01"}
    assert costs(instance, runs["failing"]) == one_call  # the call was charged before the step failed
    assert costs(instance, runs["gated_cost"]) == one_call  # the park ended the run SUCCESS
    gated_run = instance.get_run_by_id(runs["gated_cost"])
    assert gated_run is not None and gated_run.tags["flujo/parked"] == "true"
    assert costs(instance, runs["plain_job"]) == {}
    again = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs, cursor=first.cursor))
    assert again.skip_message == "no finished run to tag"


def test_a_run_of_another_location_is_left_to_that_location(instance: DagsterInstance) -> None:
    """Run of a job this location does not hold: not tagged (its own location's sensor tags it)."""
    outside = build_definitions(pipelines=[costed], resources=RESOURCES)
    run_id = outside.resolve_job_def("costed").execute_in_process(instance=instance, run_config=INPUTS).run_id
    here = build_definitions(pipelines=[failing], resources=RESOURCES)
    here.resolve_sensor_def(COSTS_SENSOR).evaluate_tick(build_sensor_context(instance=instance, definitions=here))
    assert costs(instance, run_id) == {}


def test_cost_bands() -> None:
    assert [cost_band(Decimal(v)) for v in ("0", "0.0099", "0.01", "0.0999", "0.1", "0.99", "1", "9.99", "10")] == [
        "0",
        "<0.01",
        "0.01-0.10",
        "0.01-0.10",
        "0.10-1",
        "0.10-1",
        "1-10",
        "1-10",
        ">=10",
    ]


def test_the_asset_cost_metadata_stays_numeric(instance: DagsterInstance) -> None:
    """Dagster plots asset metadata over materializations only when it is numeric."""
    defs = build_definitions(pipelines=[drafted], resources=RESOURCES)
    run_id = defs.resolve_job_def("drafted").execute_in_process(instance=instance, run_config=DRAFTED_INPUTS).run_id
    materialized = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    metadata = [e.asset_materialization.metadata for e in materialized if e.asset_materialization is not None]
    values = [m[RUN_COST_TAG] for m in metadata if RUN_COST_TAG in m]
    assert values and all(isinstance(v, FloatMetadataValue) for v in values)
    assert values[0].value == pytest.approx(0.00006)


def test_a_plain_merge_of_different_settings_fails_naming_the_key() -> None:
    """Documented limit: outside components the merge is Dagster's, whose error names the key."""
    strict = build_definitions(pipelines=[gated], resources={**RESOURCES, "approval_settings": ApprovalSettings()})
    signed = ApprovalSettings(require_signed_decisions=True)
    other = build_definitions(pipelines=[gated_two], resources={**RESOURCES, "approval_settings": signed})
    with pytest.raises(DagsterInvariantViolationError, match="same key 'approval_settings'"):
        Definitions.merge(strict, other)


def test_only_flujos_own_settings_objects_are_shared() -> None:
    """Equal settings objects become one, so that results merge; a runtime or a user's resource stays the object
    given (two TestModels configured alike compare equal, yet each records its own calls)."""
    first, second = AgentRuntime(model=TestModel()), AgentRuntime(model=TestModel())
    assert first == second  # equal by value ...
    user = {"dsn": "postgresql://example"}
    chosen = default_resources({"agent_runtime": second, "lookup": user, "approval_settings": ApprovalSettings()})
    assert chosen["agent_runtime"] is second and chosen["lookup"] is user  # ... yet kept as given
    again = default_resources({"approval_settings": ApprovalSettings()})
    assert again["approval_settings"] is chosen["approval_settings"]  # flujo's own settings: one object
