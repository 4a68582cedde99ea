"""Asset checks: every asset has a blocking `flujo_type` check that its stored value loads back as its declared
type; users attach `Check`s to keys; a failing blocking check fails the producing step so that nothing
downstream of it runs in the run."""

from __future__ import annotations

from typing import Any

import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterEventType, DagsterInstance, execute_job, reconstructable
from pydantic import BaseModel
from upath import UPath

from flujo_dagster import Check, ConfigurationError, Pipeline, PydanticJsonIOManager, build_definitions, step
from flujo_dagster.adapter.storage.io_manager import StoredKey, dump_envelope
from tests.review_defs import checked_job, defs
from tests.test_asset_review import inputs, materialized

Evaluations = dict[tuple[str, str], tuple[bool, AssetCheckSeverity, str]]


def evaluations(instance: DagsterInstance, run_id: str) -> Evaluations:
    """(asset, check) -> (passed, severity, description) for each check evaluated in `run_id`."""
    found: Evaluations = {}
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        event = record.dagster_event
        assert event is not None
        evaluation = event.event_specific_data
        key = (evaluation.asset_key.to_user_string(), evaluation.check_name)  # type: ignore[union-attr]
        found[key] = (evaluation.passed, evaluation.severity, evaluation.description or "")  # type: ignore[union-attr]
    return found


def started(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START) if e.step_key]


def test_every_asset_has_a_type_check_and_the_user_checks() -> None:
    assets = defs.resolve_assets_def(AssetKey(["checked", "summary"]))
    specs = {(s.asset_key.to_user_string(), s.name): s.blocking for s in assets.check_specs}
    assert specs == {
        ("checked/draft", "flujo_type"): True,
        ("checked/summary", "flujo_type"): True,
        ("checked/summary", "summary_not_empty"): True,
        ("checked/report", "flujo_type"): True,
        ("checked/report", "report_short"): False,
        ("checked/report", "flujo_final_context"): True,  # the final context is not an asset here
    }


def test_passing_checks_and_a_failing_non_blocking_one(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(checked_job), instance=instance, run_config=inputs("checked", "otters")) as run:
        assert run.success
        run_id = run.run_id
    typed = "the stored value loads back as its declared type"
    assert evaluations(instance, run_id) == {
        ("checked/draft", "flujo_type"): (True, AssetCheckSeverity.ERROR, typed),
        ("checked/summary", "flujo_type"): (True, AssetCheckSeverity.ERROR, typed),
        ("checked/summary", "summary_not_empty"): (True, AssetCheckSeverity.ERROR, "passed"),
        ("checked/report", "flujo_type"): (True, AssetCheckSeverity.ERROR, typed),
        ("checked/report", "report_short"): (
            False,
            AssetCheckSeverity.WARN,
            "report_short returned a false value for this materialization",
        ),
        ("checked/report", "flujo_final_context"): (
            True,
            AssetCheckSeverity.ERROR,
            "the run's final context validated as Brief and was stored",
        ),
    }


def test_a_failing_blocking_check_stops_the_steps_downstream(instance: DagsterInstance) -> None:
    config = inputs("checked", "blank")  # summarise writes "   "
    with execute_job(reconstructable(checked_job), instance=instance, run_config=config, raise_on_error=False) as run:
        assert not run.success
        run_id = run.run_id
        failure = next(e for e in run.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "checked_graph.summarise"
    assert failure.step_failure_data is not None and failure.step_failure_data.user_failure_data is not None
    assert failure.step_failure_data.user_failure_data.description == (
        "blocking check(s) on asset checked/summary failed in step 'summarise': summary_not_empty "
        "(summary_not_empty returned a false value for this materialization). The steps after it do not run; "
        "fix the value or the check and re-execute."
    )
    assert started(instance, run_id) == [
        "checked_graph.flujo_inputs",
        "checked_graph.sources",
        "checked_graph.write",
        "checked_graph.stats",
        "checked_graph.summarise",
    ]  # publish and flujo_context never started
    assert set(materialized(instance, run_id)) == {"checked/draft", "checked/summary"}
    found = evaluations(instance, run_id)
    assert found[("checked/summary", "summary_not_empty")][:2] == (False, AssetCheckSeverity.ERROR)
    assert found[("checked/summary", "flujo_type")][0] is True
    assert ("checked/report", "flujo_type") not in found


def test_a_stored_value_that_does_not_load_fails_the_type_check(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = PydanticJsonIOManager.write

    def corrupt(path: UPath, data: bytes, **options: Any) -> None:
        if path.name == "summary.json" and path.parent.name == "checked_graph.summarise":
            # an intact envelope, of another type
            data = dump_envelope(StoredKey("summary", int), 5, path, options.get("root"))
        write(path, data, **options)

    monkeypatch.setattr(PydanticJsonIOManager, "write", staticmethod(corrupt))
    config = inputs("checked", "otters")
    with execute_job(reconstructable(checked_job), instance=instance, run_config=config, raise_on_error=False) as run:
        assert not run.success
        run_id = run.run_id
    found = evaluations(instance, run_id)
    passed, severity, description = found[("checked/summary", "flujo_type")]
    assert (passed, severity) == (False, AssetCheckSeverity.ERROR)
    assert description.startswith("stored value of key 'summary' (run ")
    assert "no longer matches its declared type str" in description
    assert found[("checked/summary", "summary_not_empty")] == (
        False,
        AssetCheckSeverity.ERROR,
        "not evaluated: the stored value does not load back as its declared type",
    )
    assert "checked_graph.publish" not in started(instance, run_id)


class Note(BaseModel):
    text: str
    summary: str = ""


@step
def summary(text: str) -> str:
    return text


def test_checks_are_refused_on_keys_that_are_not_assets_and_on_duplicate_names() -> None:
    def not_empty(value: object) -> bool:
        return bool(value)

    assert Check("summary", fn=not_empty).name == "not_empty"
    assert Check("summary", fn=lambda value: True).name == "summary_check"
    bad = Pipeline(
        "bad_checks",
        context=Note,
        steps=[summary],
        assets=["summary"],
        checks=[Check("text", fn=not_empty), Check("summary", fn=not_empty), Check("summary", fn=not_empty)],
    )
    with pytest.raises(ConfigurationError) as error:
        build_definitions(pipelines=[bad])
    assert [str(f) for f in error.value.findings] == [
        "[CHECK-001] error at bad_checks > check:not_empty: check 'not_empty' is on key 'text', which is not in "
        "assets=['summary'], so it would never run. Hint: add 'text' to assets=[...], or check a key that is an asset",
        "[CHECK-002] error at bad_checks > check:not_empty: two checks on key 'summary' are named 'not_empty'. "
        "Hint: give each check of a key its own name",
    ]


def test_checks_on_a_pipeline_without_assets_and_async_checks_are_refused() -> None:
    def not_empty(value: object) -> bool:
        return bool(value)

    no_assets = Pipeline("no_assets", context=Note, steps=[summary], checks=[Check("summary", fn=not_empty)])
    with pytest.raises(ConfigurationError, match="check 'not_empty' is on key 'summary', which is not in assets="):
        build_definitions(pipelines=[no_assets])

    async def judged(value: object) -> bool:
        return bool(value)

    with pytest.raises(TypeError, match="the check function must be synchronous and return a bool"):
        Check("summary", fn=judged)
