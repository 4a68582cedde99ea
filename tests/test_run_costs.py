"""The `flujo_costs` sensor under hostile or unlucky input: malformed or forged cost metadata in one run (a job of
the same name run in process on a shared instance) never stops later runs from being tagged, a cursor that cannot
be read restarts from the beginning, a run whose finish was committed after a later one's is still tagged, and no
run is tagged twice."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from dagster import (
    DagsterInstance,
    Definitions,
    JobDefinition,
    Output,
    SensorDefinition,
    build_sensor_context,
    job,
    op,
)
from dagster._core.storage.runs.schema import RunsTable

from flujo_dagster import build_definitions
from flujo_dagster.adapter.control.costs import metadata_calls
from flujo_dagster.names import (
    COST_USD,
    COSTS_SENSOR,
    INPUT_TOKENS,
    MODEL,
    MODEL_SOURCE,
    OUTPUT_TOKENS,
    REQUESTS,
    RUN_COST_BAND_TAG,
    RUN_COST_TAG,
    STEP_PATH,
)
from tests.location_defs import INPUTS, costed, runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:`parse_obj_as` is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)
GOOD_COST = "0.000120"
CALL = {
    MODEL: "m",
    MODEL_SOURCE: "agent",
    STEP_PATH: "costed > agent:write",
    REQUESTS: 1,
    INPUT_TOKENS: 1,
    OUTPUT_TOKENS: 1,
}


def impostor(meta: Mapping[str, Any]) -> JobDefinition:
    """A plain job named like the flujo job whose output carries `meta` (forged or malformed cost metadata)."""

    @op
    def forged() -> Any:
        yield Output(1, metadata=dict(meta))

    @job(name="costed")
    def fake() -> None:
        forged()

    return fake


@pytest.fixture
def defs() -> Definitions:
    return build_definitions(pipelines=[costed], resources={"agent_runtime": runtime})


def tick(defs: Definitions, instance: DagsterInstance, cursor: str | None) -> str:
    sensor: SensorDefinition = defs.resolve_sensor_def(COSTS_SENSOR)
    result = sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs, cursor=cursor))
    assert result.cursor is not None
    return result.cursor


def good_run(defs: Definitions, instance: DagsterInstance) -> str:
    return defs.resolve_job_def("costed").execute_in_process(instance=instance, run_config=INPUTS).run_id


def tag(instance: DagsterInstance, run_id: str, name: str = RUN_COST_TAG) -> str | None:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return run.tags.get(name)


@pytest.mark.parametrize(
    "meta",
    [
        {MODEL: "m"},  # the rest missing
        {**CALL, REQUESTS: "many"},
        {**CALL, INPUT_TOKENS: "NaN"},
        {**CALL, COST_USD: "NaN"},
        {**CALL, COST_USD: "Infinity"},
        {**CALL, COST_USD: "-5"},
    ],
    ids=["missing", "non-numeric", "nan-tokens", "nan-cost", "infinite-cost", "negative-cost"],
)
def test_a_malformed_run_does_not_stop_a_later_good_run(
    defs: Definitions, instance: DagsterInstance, meta: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """The malformed call is not counted (a warning names the run and what was wrong); the run is still tagged
    with what could be read, and the good run after it is tagged in the same tick."""
    bad = impostor(meta).execute_in_process(instance=instance).run_id
    good = good_run(defs, instance)
    tick(defs, instance, None)
    assert tag(instance, bad) == "0.000000" and tag(instance, bad, RUN_COST_BAND_TAG) == "0"
    assert tag(instance, good) == GOOD_COST
    assert f"run {bad}: 1 malformed agent call record(s) not counted" in capfd.readouterr().err


def test_malformed_records_are_skipped_not_raised() -> None:
    skipped: list[str] = []
    table = {"flujo/steps_json": [{"model": "m", "path": "a", "requests": None}, "not a record"]}
    assert metadata_calls({**table, **CALL, COST_USD: "nan"}, "r", skipped=skipped) == []
    assert skipped == [
        "a: requests=None is not a count",
        "costed > agent:write: cost_usd='nan' is not a finite non-negative number",
    ]
    assert metadata_calls({"flujo/steps_json": {"model": "m"}}, "r") == []  # not a table: nothing, no error


def test_a_run_that_cannot_be_tagged_is_logged_and_passed_over(
    defs: Definitions, instance: DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    """A forged total too large to be real is an error for that run only: logged naming it, not tagged, not
    retried, and the later good run is tagged."""
    bad = impostor({**CALL, COST_USD: "9e999999"}).execute_in_process(instance=instance).run_id
    good = good_run(defs, instance)
    cursor = tick(defs, instance, None)
    assert f"run {bad}: cannot tag its cost, passed over: ValueError" in capfd.readouterr().err
    assert tag(instance, bad) is None and tag(instance, good) == GOOD_COST
    tick(defs, instance, cursor)
    assert bad not in capfd.readouterr().err  # handled once


@pytest.mark.parametrize("cursor", ["garbage", '{"after": "yesterday"}', "[]", '{"after": null, "seen": 3}'])
def test_a_cursor_that_cannot_be_read_restarts_from_the_beginning(
    defs: Definitions, instance: DagsterInstance, cursor: str, capfd: pytest.CaptureFixture[str]
) -> None:
    run_id = good_run(defs, instance)
    tick(defs, instance, cursor)
    assert tag(instance, run_id) == GOOD_COST
    assert "flujo_costs: cannot read the cursor" in capfd.readouterr().err


def test_a_run_committed_after_a_later_one_is_still_tagged_once(defs: Definitions, instance: DagsterInstance) -> None:
    """Run A's finish is stamped 5 ms before the latest update the previous tick saw (another worker's clock, or
    its commit landed after the tick read run B): A is tagged by the next tick, and neither run is tagged again
    (a tag changed by hand after tagging stays as it is)."""
    b = good_run(defs, instance)
    cursor = tick(defs, instance, None)
    assert tag(instance, b) == GOOD_COST
    a = good_run(defs, instance)
    stamped = datetime.fromisoformat(json.loads(cursor)["after"]) - timedelta(milliseconds=5)
    with instance.run_storage.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(
            RunsTable.update().where(RunsTable.c.run_id == a).values(update_timestamp=stamped.replace(tzinfo=None))
        )
    cursor = tick(defs, instance, cursor)
    assert tag(instance, a) == GOOD_COST
    instance.add_run_tags(a, {RUN_COST_TAG: "marked"})
    instance.add_run_tags(b, {RUN_COST_TAG: "marked"})
    for _ in range(2):
        cursor = tick(defs, instance, cursor)
    assert tag(instance, a) == tag(instance, b) == "marked"
