"""`FlujoPipelineComponent`: the example `dg` project under examples/dg_digest, checked with the venv's `dg` and
run in process on its offline model; the component's YAML settings and their errors.

pytest puts `examples/dg_digest` on sys.path (pyproject.toml), as `dg` does for the project's code location.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from dagster import AssetKey, ComponentTree, DagsterInstance, load_from_defs_folder
from dagster.components import Model
from dg_digest.pipelines import Digest, digest
from pydantic import BaseModel, ValidationError

from flujo_dagster import (
    Budget,
    ConfigurationError,
    DailyPartitions,
    FlujoDagsterTranslator,
    FlujoPipelineComponent,
    Pipeline,
    Price,
    Schedule,
    StaticPartitions,
    load_final_context,
)
from flujo_dagster.adapter.compile.component_models import (
    BudgetModel,
    PartitionsModel,
    PriceModel,
    ScheduleModel,
    yaml_fields,
)
from tests.conftest import dg_executable

# dagster's YAML resolution (`resolve_from_yaml`) still calls pydantic's deprecated `parse_obj_as`.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`parse_obj_as` is deprecated:pydantic.warnings.PydanticDeprecatedSince20"
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dg_digest"
RUN_CONFIG = {
    "ops": {"dg_digest_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "dagster agents"}}}}}}
}
BASE = "pipeline: dg_digest.pipelines:digest\nagent_runtime: dg_digest.offline:offline_runtime\n"


class RenamingTranslator(FlujoDagsterTranslator):
    """A user translator, loaded by import path from `translator.type`."""

    def get_job_name(self, pipeline: Pipeline) -> str:
        return f"{pipeline.name}_renamed"


def schedule_inputs(scheduled: object) -> dict[str, object]:
    """Run inputs computed at a tick (loaded by import path from `schedule.inputs_fn`)."""
    return {"topic": f"agents {scheduled}"}


def _dg(*args: str, cwd: Path = EXAMPLE) -> subprocess.Popen[str]:
    """The venv's `dg` in `cwd`, without DAGSTER_HOME (dg check defs uses an ephemeral instance)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    return subprocess.Popen(
        [str(dg_executable()), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _component(yaml: str) -> FlujoPipelineComponent:
    component = FlujoPipelineComponent.resolve_from_yaml(BASE + yaml)
    assert isinstance(component, FlujoPipelineComponent)
    return component


def test_dg_check_defs_and_list_components_accept_the_example(tmp_path: Path) -> None:
    broken = tmp_path / "dg_digest"
    shutil.copytree(EXAMPLE, broken, ignore=shutil.ignore_patterns("__pycache__"))
    yaml = broken / "dg_digest" / "defs" / "digest" / "defs.yaml"
    yaml.write_text(yaml.read_text().replace("dg_digest.pipelines:digest", "dg_digest.pipelines:missing"))
    runs = {  # concurrently: each dg call boots dagster (about 5 to 10 s)
        "check": _dg("check", "defs"),
        "list": _dg("list", "components", "--json"),
        "broken": _dg("check", "defs", cwd=broken),
    }
    out = {name: run.communicate(timeout=300) for name, run in runs.items()}
    check_out, check_err = out["check"]
    assert runs["check"].returncode == 0, check_out + check_err
    assert "All component YAML validated successfully." in check_out
    assert "All definitions loaded successfully." in check_out
    assert runs["list"].returncode == 0, out["list"][1]
    items = {item["key"]: item["summary"] for item in json.loads(out["list"][0])["items"]}
    assert items["flujo_dagster.FlujoPipelineComponent"].startswith("A flujo_dagster pipeline")
    assert runs["broken"].returncode == 1
    assert "module 'dg_digest.pipelines' has no attribute 'missing'" in "".join(out["broken"])


def test_the_example_component_loads_and_runs_in_process(instance: DagsterInstance) -> None:
    defs = load_from_defs_folder(path_within_project=EXAMPLE / "dg_digest")
    report_key = AssetKey(["examples", "dg_digest", "report"])
    assert defs.resolve_assets_def(report_key).group_names_by_key[report_key] == "digests"
    schedule = defs.resolve_schedule_def("dg_digest_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 6 * * *", "UTC")
    result = defs.resolve_job_def("dg_digest").execute_in_process(instance=instance, run_config=RUN_CONFIG)
    assert result.success
    final = load_final_context(digest, result.run_id, instance=instance)
    assert isinstance(final, Digest)
    assert final.sources == [
        "Typed agent pipelines",
        "Agents in production",
        "Assets and lineage",
        "Schedules for LLM jobs",
    ]
    assert final.draft is not None and final.draft.startswith("Offline digest. Summarise")
    assert final.report == f"# Dagster Agents digest\n\n{final.draft}"


def test_yaml_settings_reach_the_pipeline_and_the_compiler() -> None:
    component = _component(
        "prices:\n  'openai:gpt-5-mini': {input_per_mtok: 0.1, output_per_mtok: '0.4'}\n"
        "budget: {max_tokens: 5000, scope: run}\n"
        "translator: {type: tests.test_component.RenamingTranslator}\n"
        "partitions: {type: daily, start: '2026-01-01', input_key: topic}\n"
        "schedule: {cron: '0 7 * * 1', inputs_fn: tests.test_component.schedule_inputs, default_status: running}\n"
    )
    pipeline = component.resolve_pipeline()
    assert pipeline.budget is not None and (pipeline.budget.max_tokens, pipeline.budget.scope) == (5000, "run")
    assert pipeline.partitions == DailyPartitions(start=date(2026, 1, 1), input_key="topic")
    assert pipeline.schedule is not None and pipeline.schedule.inputs is schedule_inputs
    assert pipeline.schedule.default_status == "running"
    assert pipeline.steps == digest.steps and digest.schedule is None  # the imported pipeline is left as it was
    price = component.resolve_prices()["openai:gpt-5-mini"]
    assert (price.input_per_mtok, price.output_per_mtok) == (Decimal("0.1"), Decimal("0.4"))
    translator = component.resolve_translator()
    assert isinstance(translator, RenamingTranslator)
    static = _component("partitions: {type: static, keys: [en, es]}\n").resolve_pipeline().partitions
    assert static == StaticPartitions(keys=["en", "es"])


def test_component_build_defs_uses_the_same_compiler() -> None:
    component = _component("translator: {type: tests.test_component.RenamingTranslator, key_prefix: [x]}\n")
    defs = component.build_defs(ComponentTree.for_test().load_context)
    assert defs.resolve_job_def("dg_digest_renamed").name == "dg_digest_renamed"
    assert AssetKey(["x", "dg_digest", "draft"]) in {k for a in defs.assets or [] for k in a.keys}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("translator: {type: tests.test_component.schedule_inputs}\n", "not a FlujoDagsterTranslator subclass"),
        (
            "schedule: {cron: '0 6 * * *', inputs: {topic: a}, inputs_fn: tests.test_component.schedule_inputs}\n",
            "not both",
        ),
        ("partitions: {type: daily}\n", "daily partitions need `start`"),
        ("partitions: {type: static, keys: [a], start: '2026-01-01'}\n", "static partitions take `keys`"),
        ("prices:\n  'openai:gpt-5-mini': {input_per_mtok: lots, output_per_mtok: 1}\n", "must be a number"),
        ("budget: {max_cost_usd: '1', max_wait: .inf}\n", "max_wait must be a finite number of seconds .* got inf"),
        ("budget: {max_cost_usd: '1', max_wait: -5}\n", "max_wait must be a finite number of seconds .* got -5.0"),
    ],
)
def test_bad_settings_are_configuration_errors(yaml: str, message: str) -> None:
    component = _component(yaml)
    with pytest.raises(ConfigurationError, match=message):
        component.resolve_pipeline()
        component.resolve_prices()
        component.resolve_translator()


@pytest.mark.parametrize(
    ("field", "path", "message"),
    [
        ("pipeline", "dg_digest.nowhere:digest", "cannot import module 'dg_digest.nowhere'"),
        ("pipeline", "dg_digest.pipelines:Digest", "is a ModelMetaclass, not a Pipeline"),
        ("pipeline", "digest", "is not an import path"),
        ("agent_runtime", "dg_digest.pipelines:digest", "gave a Pipeline, not an AgentRuntime"),
    ],
)
def test_bad_import_paths_are_configuration_errors(field: str, path: str, message: str) -> None:
    component = FlujoPipelineComponent.resolve_from_yaml(BASE.replace(f"{field}: ", f"{field}: {path} #", 1))
    assert isinstance(component, FlujoPipelineComponent)
    with pytest.raises(ConfigurationError, match=message):
        component.resolve_pipeline()
        component.resolve_resources()


def test_the_yaml_models_are_derived_from_the_dsl_value_objects() -> None:
    """Each YAML model has exactly its value object's fields and defaults (a field added to `Budget` shows up in
    `defs.yaml` without restating it), in the forms YAML can hold."""

    def defaults(value_type: type) -> dict[str, object]:
        return {f.name: f.default for f in dataclasses.fields(value_type) if f.default is not dataclasses.MISSING}

    def model_defaults(model: type[BaseModel]) -> dict[str, object]:
        return {n: f.default for n, f in model.model_fields.items() if not f.is_required()}

    assert list(PriceModel.model_fields) == [f.name for f in dataclasses.fields(Price)]
    assert list(BudgetModel.model_fields) == [f.name for f in dataclasses.fields(Budget)]
    plain = {"max_cost_usd": None, "max_tokens": None, "scope": "run", "timezone": "UTC"}
    assert model_defaults(BudgetModel) == {**plain, "max_wait": 120.0}  # YAML gives max_wait in seconds
    assert defaults(Budget) == {**plain, "max_wait": timedelta(minutes=2)}
    assert BudgetModel(max_cost_usd=1, max_wait=0.5).resolve().max_wait == timedelta(seconds=0.5)
    assert set(ScheduleModel.model_fields) == {f.name for f in dataclasses.fields(Schedule)} | {"inputs_fn"}
    daily, static = ({f.name for f in dataclasses.fields(p)} for p in (DailyPartitions, StaticPartitions))
    assert set(PartitionsModel.model_fields) == daily | static | {"type"}
    assert PriceModel.model_fields["cached_input_per_mtok"].annotation == str | float | None
    assert PartitionsModel.model_fields["keys"].annotation == list[str] | None


def test_a_value_object_field_gets_its_yaml_form() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Limits:
        runs: int
        usd: Decimal | None = None
        since: date | None = None
        tags: tuple[str, ...] = ()

    @yaml_fields(Limits)
    class LimitsModel(Model):
        """Limits, in YAML."""

    assert LimitsModel.__doc__ == "Limits, in YAML." and LimitsModel.model_fields["runs"].is_required()
    parsed = LimitsModel.model_validate({"runs": 2, "usd": 0.1, "since": "2026-01-01", "tags": ["a"]})
    assert parsed.model_dump() == {"runs": 2, "usd": 0.1, "since": "2026-01-01", "tags": ["a"]}
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        LimitsModel.model_validate({"runs": 2, "limit": 1})


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("budget: {scope: day}\n", "budget: Budget needs max_cost_usd, max_tokens or both"),
        (
            "budget: {max_cost_usd: '-1'}\n",
            "budget: Budget max_cost_usd must be a finite number from 0 to 4611686018.427387903, got '-1'",
        ),
        ("partitions: {type: daily, start: '2026-13-01'}\n", "partitions: DailyPartitions start must be a date"),
        ("partitions: {type: static, keys: [a, a]}\n", "partitions: StaticPartitions keys must be unique"),
        ("partitions: {type: static}\n", "partitions: static partitions need `keys`"),
        (
            "partitions: {type: daily, start: '2026-01-01', keys: [a]}\n",
            "daily partitions take `start`, `end`, `timezone`, `input_key`, not ['keys']",
        ),
    ],
)
def test_the_value_objects_own_checks_name_the_attribute(yaml: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        _component(yaml).resolve_pipeline()


def test_a_cron_string_dagster_refuses_is_a_finding_of_the_pipeline() -> None:
    """What only Dagster would refuse is a validation finding when the component builds its definitions (the one
    validation pass), not an error of the YAML value object."""
    component = _component("schedule: {cron: 'daily', inputs: {topic: a}}\n")
    schedule = component.resolve_pipeline().schedule
    assert schedule is not None and schedule.cron == "daily"
    with pytest.raises(ConfigurationError) as raised:
        component.build_defs(ComponentTree.for_test().load_context)
    assert [str(f) for f in raised.value.findings] == [
        "[SCHED-003] error at dg_digest > schedule: Dagster refuses the cron string 'daily': it has 1 field; Dagster "
        "reads exactly 5 (minute hour day-of-month month day-of-week). Hint: write five fields, minute hour "
        "day-of-month month day-of-week (e.g. '0 6 * * *'), or an alias such as '@daily'"
    ]


def test_a_bad_price_names_its_model() -> None:
    component = _component("prices:\n  'openai:gpt-5-mini': {input_per_mtok: lots, output_per_mtok: 1}\n")
    with pytest.raises(ConfigurationError) as raised:
        component.resolve_prices()
    assert str(raised.value) == (
        "prices['openai:gpt-5-mini']: input_per_mtok must be a number of US dollars, got 'lots'"
    )
