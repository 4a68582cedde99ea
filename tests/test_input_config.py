"""Typed run inputs: the `flujo_inputs` op's config schema is derived from the context model (types Dagster can
express, the fields' descriptions and defaults, which inputs are required), so Dagster refuses a value it can check
before the run launches; a type it cannot express is `Any`, and the context model still validates every input in
the op. The documented run config (docs/concepts.md, "Run inputs in the Launchpad") is launched verbatim."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pytest
import yaml
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterInvalidConfigError,
    JobDefinition,
    RunRequest,
    build_schedule_context,
    validate_run_config,
)
from dagster._config import ConfigType, ConfigTypeKind, Field
from pydantic import BaseModel, BeforeValidator, field_validator

from definitions import defs as example_defs
from definitions.digest import digest as digest_pipeline
from flujo_dagster import Pipeline, build_definitions, run_pipeline, step
from flujo_dagster.adapter.compile.compiler import compile_pipeline
from flujo_dagster.adapter.compile.translator import FlujoDagsterTranslator
from flujo_dagster.adapter.ops.input_config import inputs_config_type
from flujo_dagster.names import CONTEXT_OUTPUT
from tests.fixtures import run_inputs
from tests.fixtures.typed_inputs import Aliased, Loose, Node, Tone, Window, defs, shout, typed, typed_assets

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"topic": "otters", "count": 3, "tags": ["a", "b"], "tone": "warm", "window": {"days": 7}}
ANY = "Any"


def _inputs_field(job: JobDefinition, *nodes: str) -> Field:
    """The `inputs` field of the job's run config schema, reached along `ops` through `nodes`."""
    config_type: ConfigType = job.run_config_schema.config_type
    for node in nodes:
        config_type = config_type.fields["ops"].config_type.fields[node].config_type  # type: ignore[attr-defined]
    field: Field = config_type.fields["config"].config_type.fields["inputs"]  # type: ignore[attr-defined]
    return field


def _jobs() -> list[tuple[JobDefinition, tuple[str, ...]]]:
    return [
        (defs.resolve_job_def("typed"), ("flujo_inputs",)),
        (defs.resolve_job_def("typed_assets"), ("typed_assets_graph", "flujo_inputs")),
    ]


def _config(pipeline: Any, inputs: dict[str, object]) -> dict[str, object]:
    return compile_pipeline(pipeline, translator=FlujoDagsterTranslator()).inputs_run_config(inputs)


@pytest.mark.parametrize(("name", "nodes"), [("typed", ("flujo_inputs",)), ("typed_assets", ("typed_assets_graph",))])
def test_the_run_config_schema_types_each_input_with_its_description_default_and_requiredness(
    name: str, nodes: tuple[str, ...]
) -> None:
    job = defs.resolve_job_def(name)
    inputs = _inputs_field(job, *nodes, *(["flujo_inputs"] if name == "typed_assets" else []))
    assert inputs.is_required  # `topic` has no default
    fields = inputs.config_type.fields  # type: ignore[attr-defined]
    shown = {
        k: (f.config_type.key, f.is_required, f.default_value if f.default_provided else "-") for k, f in fields.items()
    }
    assert shown == {
        "topic": ("String", True, "-"),
        "count": ("Int", False, 2),
        "ratio": ("Float", False, 0.5),
        "loud": ("Bool", False, False),
        "tags": ("Array.String", False, []),  # default_factory=list, evaluated once
        "note": ("Noneable.String", False, None),
        "lang": (f"{name}__inputs__lang", False, "en"),
        "tone": (f"{name}__inputs__tone", False, "plain"),  # an Enum member's default as its value
        "window": (fields["window"].config_type.key, False, None),
        "loose": (fields["loose"].config_type.key, False, None),
        "weights": ("Map.String.Float", False, {}),
        "extra": ("Permissive", False, {}),  # dict[str, int | str]: the values are `Any`
        "level": (ANY, False, 1),  # an int-valued Enum: Dagster's Enum holds strings
        "either": (ANY, False, 0),
        "pair": (ANY, False, "-"),  # a tuple default is not a plain JSON value: left to the context model
        "aliased": (ANY, False, None),
        "on": (ANY, False, None),
        "summary": ("Noneable.String", False, "-"),  # a step writes it: optional, no default scaffolded
    }
    assert fields["topic"].description == "What to write about."
    assert fields["count"].description == "How many items."
    assert fields["tags"].description == "Labels for the run."
    assert fields["ratio"].description is None
    lang = fields["lang"].config_type
    assert lang.kind == ConfigTypeKind.ENUM and [v.config_value for v in lang.enum_values] == ["en", "es"]
    tone = fields["tone"].config_type
    assert [v.config_value for v in tone.enum_values] == [t.value for t in Tone]


def test_a_nested_model_is_a_shape_of_its_fields_recursively() -> None:
    fields = _inputs_field(defs.resolve_job_def("typed"), "flujo_inputs").config_type.fields  # type: ignore[attr-defined]
    window = fields["window"].config_type
    assert window.kind == ConfigTypeKind.NONEABLE
    shape = window.inner_type
    assert shape.kind == ConfigTypeKind.STRICT_SHAPE  # extra="forbid": unknown keys refused, as pydantic does
    assert shape.description == Window.__doc__
    assert {k: (f.config_type.key, f.is_required, f.description) for k, f in shape.fields.items()} == {
        "days": ("Int", True, "How many days back."),
        "labels": ("Array.String", False, None),
    }
    loose = fields["loose"].config_type.inner_type
    assert loose.kind == ConfigTypeKind.PERMISSIVE_SHAPE  # pydantic ignores extra keys: Dagster lets them through
    assert {k: f.config_type.key for k, f in loose.fields.items()} == {"name": "String"}
    assert Loose.model_validate({"name": "x", "other": 1}).name == "x"


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [
        pytest.param(Aliased, ANY, id="aliased-model"),
        pytest.param(int | str, ANY, id="union"),
        pytest.param(tuple[int, str], ANY, id="tuple"),
        pytest.param(dict[int, str], ANY, id="int-keys"),
        pytest.param(set[str], ANY, id="set"),
        pytest.param(Literal["a", 1], ANY, id="mixed-literal"),
        pytest.param(TypeVar("T"), ANY, id="typevar"),
        pytest.param("not a type", ANY, id="a-string"),
        pytest.param(None, ANY, id="none"),
        pytest.param(list[int | str] | None, "Noneable.Array.Any", id="optional-list-of-union"),
        pytest.param(Any, ANY, id="any"),
    ],
)
def test_a_type_dagster_cannot_express_falls_back_to_any(annotation: object, kind: str) -> None:
    config_type = inputs_config_type(annotation, ("x",), "p", frozenset())
    resolved = Field(config_type).config_type  # what Dagster makes of it: never an error
    assert resolved.key == kind


def test_a_recursive_model_inside_a_model_is_any_below_its_first_level() -> None:
    resolved = Field(inputs_config_type(Node | None, ("node",), "p", frozenset())).config_type
    assert resolved.kind == ConfigTypeKind.NONEABLE
    fields = resolved.inner_type.fields  # type: ignore[attr-defined]
    assert fields["value"].config_type.key == "Int"
    assert fields["child"].config_type.key == ANY  # Node again: not unrolled


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        pytest.param(
            {"topic": "otters", "count": "3"}, 'Value "3" of type "<class \'str\'>" is not valid', id="wrong-type"
        ),
        pytest.param({"count": 3}, 'Missing required config entry "topic"', id="missing"),
        pytest.param({"topic": "otters", "topik": "x"}, 'Received unexpected config entry "topik"', id="unknown"),
        pytest.param({"topic": "otters", "lang": "fr"}, "not in enum type", id="not-in-literal"),
        pytest.param({"topic": "otters", "window": {"days": 1, "weeks": 2}}, '"weeks"', id="nested-unknown"),
        pytest.param({"topic": "otters", "window": {"days": "one"}}, 'Value "one"', id="nested-wrong-type"),
    ],
)
def test_a_value_dagster_can_check_is_refused_before_the_run_launches(
    instance: DagsterInstance, inputs: dict[str, object], error: str
) -> None:
    for job, nodes in _jobs():
        pipeline = typed if job.name == "typed" else typed_assets
        with pytest.raises(DagsterInvalidConfigError) as refused:
            job.execute_in_process(run_config=_config(pipeline, inputs), instance=instance)
        assert error in str(refused.value)
        assert f"root:ops:{':ops:'.join(nodes)}:config:inputs" in str(refused.value)
    assert instance.get_runs() == []  # no run was created, so no step ran and no asset was marked failed


def test_typed_inputs_reach_the_steps_validated_by_the_context_model(instance: DagsterInstance) -> None:
    inputs = {**GOOD, "either": "seven", "pair": [4, "four"], "on": "2026-11-26", "extra": {"k": 1}}
    for job, _ in _jobs():
        pipeline = typed if job.name == "typed" else typed_assets
        result = job.execute_in_process(run_config=_config(pipeline, inputs), instance=instance)
        assert result.success
        context = result.output_for_node(
            "flujo_context" if job.name == "typed" else "typed_assets_graph.flujo_context", CONTEXT_OUTPUT
        )
        assert context.summary == "ottersx3 [a,b] warm 7d 'seven' (4, 'four')"
        assert context.tone is Tone.WARM and context.on.isoformat() == "2026-11-26"


def test_the_context_model_still_refuses_what_the_coarse_schema_lets_through(instance: DagsterInstance) -> None:
    # `count` is an Int to Dagster; only the context model knows it must be > 0
    job = defs.resolve_job_def("typed")
    result = job.execute_in_process(
        run_config=_config(typed, {"topic": "otters", "count": 0}), instance=instance, raise_on_error=False
    )
    assert not result.success
    started = [e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START]
    assert started == ["flujo_inputs"]


def _documented_run_configs() -> list[dict[str, Any]]:
    """The YAML blocks of docs/concepts.md's "Run inputs in the Launchpad" section, parsed verbatim."""
    text = (ROOT / "docs" / "concepts.md").read_text()
    section = text.split("## Run inputs in the Launchpad", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    return [yaml.safe_load(block) for block in blocks]


def test_the_documented_run_config_launches_a_pipeline_with_and_without_assets(instance: DagsterInstance) -> None:
    without_assets, with_assets = _documented_run_configs()
    brief = run_inputs.defs.resolve_job_def("brief")
    result = brief.execute_in_process(run_config=without_assets, instance=instance)
    assert result.success
    assert result.output_for_node("flujo_context", CONTEXT_OUTPUT).topic == "agents"
    digest = example_defs.resolve_job_def("digest")
    result = digest.execute_in_process(run_config=with_assets, instance=instance)
    assert result.success
    context = result.output_for_node("digest_graph.flujo_context", CONTEXT_OUTPUT)
    assert (context.topic, context.max_sources) == ("agents", 2)
    assert context.report.startswith("# Digest: agents")
    # the asset graph's "Materialize" launches through the implicit asset job: the same path
    every_asset = example_defs.resolve_implicit_global_asset_job_def()
    selection = [key for key in every_asset.asset_layer.executable_asset_keys if key.path[0] == "digest"]
    result = every_asset.execute_in_process(run_config=with_assets, instance=instance, asset_selection=selection)
    assert result.success


def test_every_run_config_producer_uses_the_documented_path() -> None:
    without_assets, with_assets = _documented_run_configs()
    config = _config(run_inputs.brief, without_assets["ops"]["flujo_inputs"]["config"]["inputs"])
    assert config == without_assets
    digest = compile_pipeline(digest_pipeline, translator=FlujoDagsterTranslator())
    assert (
        digest.inputs_run_config(with_assets["ops"]["digest_graph"]["ops"]["flujo_inputs"]["config"]["inputs"])
        == with_assets
    )


def test_run_pipeline_hands_lax_values_over_in_the_form_the_typed_schema_takes(instance: DagsterInstance) -> None:
    # pydantic's lax mode takes "3" for an int and "true" for a bool; Dagster's Int and Bool would not
    run = run_pipeline(shout, {"word": "hey", "times": "3", "loud": "true"}, instance=instance)
    assert run.context.shouted == "HEY! HEY! HEY!"
    stored = instance.get_run_by_id(run.run_id)
    assert stored is not None
    # `word` as given: its validator adds "!" on every pass, so its validated form would validate to "hey!!"
    assert stored.run_config["ops"]["flujo_inputs"]["config"]["inputs"] == {"word": "hey", "times": 3, "loud": True}


def test_a_schedule_tick_hands_lax_values_over_in_the_form_the_typed_schema_takes(instance: DagsterInstance) -> None:
    when = datetime(2026, 11, 26, 6, tzinfo=UTC)
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    data = defs.resolve_schedule_def("shout_schedule").evaluate_tick(context)
    (request,) = data.run_requests or []
    assert isinstance(request, RunRequest)
    assert request.run_config == {"ops": {"flujo_inputs": {"config": {"inputs": {"word": "hey", "times": 3}}}}}
    result = defs.resolve_job_def("shout").execute_in_process(run_config=request.run_config, instance=instance)
    assert result.output_for_node("flujo_context", CONTEXT_OUTPUT).shouted == "hey! hey! hey!"


def test_the_partition_key_field_has_no_default_so_the_partition_fills_it(instance: DagsterInstance) -> None:
    job = defs.resolve_job_def("localised")
    lang = _inputs_field(job, "flujo_inputs").config_type.fields["lang"]  # type: ignore[attr-defined]
    assert not lang.is_required and not lang.default_provided
    assert lang.description == "Filled by the run's partition key; leave it out. The language."
    result = job.execute_in_process(instance=instance, partition_key="es")
    assert result.output_for_node("flujo_context", CONTEXT_OUTPUT).greeting == "hola"


def _thousands(value: object) -> object:
    return int(value[:-1]) * 1000 if isinstance(value, str) and value.endswith("k") else value


class _Validated(BaseModel):
    """Inputs user code validates: a field validator that changes its value, and `Annotated` validators."""

    topic: str
    word: str = "hey"
    tags: Annotated[list[str], BeforeValidator(lambda v: v.split(",") if isinstance(v, str) else v)] = []
    budget: Annotated[int, BeforeValidator(_thousands)] = 1
    out: str | None = None

    @field_validator("word")
    @classmethod
    def exclaim(cls, value: str) -> str:
        return value + "!"


@step
def out(topic: str, word: str, tags: list[str], budget: int) -> str:
    return f"{topic} {word} {tags} {budget}"


_validated = Pipeline("validated", context=_Validated, steps=out)


def test_inputs_user_code_validates_are_any_without_a_default(instance: DagsterInstance) -> None:
    """Dagster would refuse values the model's validators accept (`"a,b"` for a list, `"3k"` for an int), and a
    default it wrote into the run config would go through a validator pydantic never runs on defaults."""
    job = build_definitions(pipelines=[_validated]).resolve_job_def("validated")
    fields = _inputs_field(job, "flujo_inputs").config_type.fields  # type: ignore[attr-defined]
    shown = {k: (f.config_type.key, f.default_value if f.default_provided else "-") for k, f in fields.items()}
    assert shown == {
        "topic": ("String", "-"),
        "word": (ANY, "-"),
        "tags": (ANY, "-"),
        "budget": (ANY, "-"),
        "out": ("Noneable.String", "-"),  # a step writes it
    }
    given = {"topic": "t", "tags": "a,b", "budget": "3k"}
    assert validate_run_config(job, _config(_validated, given))  # refused before: the schema said [String], Int
    result = run_pipeline(_validated, given, instance=instance)
    assert result.final_context.out == "t hey ['a', 'b'] 3000"  # the default "hey" not validated into "hey!"
