"""Validation rules: for each rule a failing and a passing fixture pipeline, with the exact rendered findings.

Also: how keys are inferred, what `build_definitions` raises, and composing pipelines.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

import pytest
import typing_extensions
from dagster import Definitions, JobDefinition
from pydantic import Base64Bytes, BaseModel, ConfigDict, Field
from pydantic_ai import Agent

from flujo_dagster import (
    ConfigurationError,
    Finding,
    Group,
    Loop,
    Pipeline,
    Step,
    ValidationReport,
    agent_step,
    build_definitions,
    step,
    validate,
)
from flujo_dagster.dsl.keys import StepKeys
from flujo_dagster.dsl.steps import StepSequence

# --- shared fixtures -------------------------------------------------------------------------------------------


class Notes(BaseModel):
    """topic is the run input; outline and summary are written by steps; score defaults."""

    topic: str
    outline: str
    summary: str | None = None
    score: int | None = None
    tags: list[str] = Field(default_factory=list)


def with_model() -> Agent[None, str]:
    return Agent("openai:gpt-5-mini", defer_model_check=True)


def rendered(pipeline: Pipeline | list[Pipeline]) -> list[str]:
    """Every finding of `pipeline`, rendered, in order: comparing the whole list means no extra finding slips by."""
    return [f.render() for f in validate(pipeline).findings]


@step
def outline(topic: str) -> str:
    return f"outline of {topic}"


@step
def summary(topic: str, outline: str) -> str:
    return f"{topic}: {outline}"


# --- V-CTX1: read before any step writes it, and no default ----------------------------------------------------


def test_ctx1_read_before_written_fails() -> None:
    pipeline = Pipeline("notes", context=Notes, steps=summary >> outline)
    assert rendered(pipeline) == [
        "[V-CTX1] error at notes > step:summary: reads key 'outline' before any step writes it, and it has no "
        "default. Hint: write 'outline' in an earlier step, or give the field a default"
    ]


def test_ctx1_written_before_read_passes() -> None:
    assert rendered(Pipeline("notes", context=Notes, steps=outline >> summary)) == []


def test_ctx1_defaulted_key_and_input_key_may_be_read_first() -> None:
    @step(output_keys=["outline"])
    def first(topic: str, score: int | None, tags: list[str]) -> str:
        return f"{topic} {score} {tags}"

    # topic is an input (no default, written by no step); score and tags have defaults
    assert rendered(Pipeline("notes", context=Notes, steps=[first])) == []


def test_ctx1_agent_prompt_reading_unwritten_key_fails() -> None:
    early = agent_step("summary", agent=with_model(), prompt="Summarise {outline}")
    pipeline = Pipeline("notes", context=Notes, steps=early >> outline)
    assert rendered(pipeline) == [
        "[V-CTX1] error at notes > agent:summary: reads key 'outline' before any step writes it, and it has no "
        "default. Hint: write 'outline' in an earlier step, or give the field a default"
    ]


# --- V-CTX2: unknown key, with a close-match hint --------------------------------------------------------------


def test_ctx2_unknown_read_has_close_match_hint() -> None:
    @step(name="summary")
    def misspelt(topic: str, outlin: str) -> str:
        return topic + outlin

    pipeline = Pipeline("notes", context=Notes, steps=outline >> misspelt)
    assert rendered(pipeline) == [
        "[V-CTX2] error at notes > step:summary: reads unknown key 'outlin': it is not a field of Notes. "
        "Hint: did you mean 'outline'?"
    ]


def test_ctx2_unknown_key_without_close_match_lists_known_keys() -> None:
    @step(name="summary")
    def far(topic: str, xyz: str) -> str:
        return topic + xyz

    pipeline = Pipeline("notes", context=Notes, steps=outline >> far)
    assert rendered(pipeline) == [
        "[V-CTX2] error at notes > step:summary: reads unknown key 'xyz': it is not a field of Notes. "
        "Hint: known keys: topic, outline, summary, score, tags"
    ]


def test_ctx2_unknown_written_key_prompt_key_and_asset() -> None:
    @step(output_keys=["sumary"])
    def write_misspelt(outline: str) -> str:
        return outline

    rater = Agent("openai:gpt-5-mini", output_type=int, defer_model_check=True)
    ask = agent_step("score", agent=rater, prompt="Rate {sumary} about {topik}")
    pipeline = Pipeline("notes", context=Notes, steps=outline >> write_misspelt >> ask, assets=["outlines"])
    findings = validate(pipeline).findings
    assert [f.render() for f in findings] == [
        "[V-CTX2] error at notes > step:write_misspelt: writes unknown key 'sumary': it is not a field of Notes. "
        "Hint: did you mean 'summary'?",
        "[V-CTX2] error at notes > agent:score: reads unknown key 'sumary': it is not a field of Notes. "
        "Hint: did you mean 'summary'?",
        "[V-CTX2] error at notes > agent:score: reads unknown key 'topik': it is not a field of Notes. "
        "Hint: did you mean 'topic'?",
        "[V-CTX2] error at notes: asset 'outlines' is not a field of Notes. Hint: did you mean 'outline'?",
    ]
    # the structured finding carries each part on its own
    assert findings[-1] == Finding(
        code="V-CTX2",
        severity="error",
        pipeline="notes",
        path="notes",
        message="asset 'outlines' is not a field of Notes.",
        hint="did you mean 'outline'?",
    )


def test_ctx2_known_keys_pass() -> None:
    ask = agent_step(
        "score", agent=Agent("openai:gpt-5-mini", output_type=int, defer_model_check=True), prompt="{summary}"
    )
    pipeline = Pipeline("notes", context=Notes, steps=outline >> summary >> ask, assets=["outline", "summary"])
    assert rendered(pipeline) == []


# --- V-CTX3: the written keys cannot be inferred ---------------------------------------------------------------


class Partial(BaseModel):
    summary: str
    confidence: float  # not a key of Notes


def test_ctx3_uninferable_writes_fail() -> None:
    @step
    def helper(outline: str) -> int:
        return len(outline)

    @step
    def analyse(outline: str) -> Partial:
        return Partial(summary=outline, confidence=1.0)

    pipeline = Pipeline("notes", context=Notes, steps=outline >> helper >> analyse)
    assert rendered(pipeline) == [
        "[V-CTX3] error at notes > step:helper: cannot tell which keys step 'helper' writes: no key is named "
        "'helper' and it does not return a model whose fields are all keys. Hint: pass output_keys=[...] to "
        "@step, or name the step after the key it writes",
        "[V-CTX3] error at notes > step:analyse: cannot tell which keys step 'analyse' writes: no key is named "
        "'analyse' and it does not return a model whose fields are all keys. Hint: pass output_keys=[...] to "
        "@step, or name the step after the key it writes",
    ]


def test_ctx3_explicit_output_keys_pass() -> None:
    @step(output_keys=["score"])
    def helper(outline: str) -> int:
        return len(outline)

    assert rendered(Pipeline("notes", context=Notes, steps=outline >> helper)) == []


# --- key inference -----------------------------------------------------------------------------------------------


class Analysis(BaseModel):
    summary: str | None
    score: int | None


def test_parameters_are_reads_and_function_name_is_the_written_key() -> None:
    pipeline = Pipeline("notes", context=Notes, steps=outline >> summary)
    assert pipeline.keys_of(summary) == StepKeys(reads=("topic", "outline"), writes=("summary",), split=False)
    assert pipeline.keys_of(outline) == StepKeys(reads=("topic",), writes=("outline",), split=False)


def test_returned_model_whose_fields_are_all_keys_writes_those_keys() -> None:
    @step
    def analyse(outline: str) -> Analysis:
        return Analysis(summary=outline, score=len(outline))

    @step(output_keys=["tags"])
    def tag(score: int | None, summary: str | None) -> list[str]:
        return [str(score), summary or ""]

    pipeline = Pipeline("notes", context=Notes, steps=outline >> analyse >> tag)
    assert pipeline.keys_of(analyse) == StepKeys(reads=("outline",), writes=("summary", "score"), split=True)
    assert pipeline.written_keys() == {"outline", "summary", "score", "tags"}
    assert rendered(pipeline) == []


def test_explicit_input_and_output_keys_override_inference() -> None:
    @step(input_keys=["outline"], output_keys=["score"])
    def summary(**values: str) -> int:  # named like a key, but output_keys wins
        return len(values["outline"])

    @step(input_keys=["topic", "outline"], output_keys=["summary", "score"])
    def both(topic: str, extra: str = "") -> Analysis:
        return Analysis(summary=topic + extra, score=1)

    pipeline = Pipeline("notes", context=Notes, steps=outline >> summary >> both)
    assert pipeline.keys_of(summary) == StepKeys(reads=("outline",), writes=("score",), split=False)
    assert pipeline.keys_of(both) == StepKeys(reads=("topic", "outline"), writes=("summary", "score"), split=True)
    assert rendered(pipeline) == []


def test_agent_step_reads_prompt_fields_and_writes_output_key_or_its_name() -> None:
    def prompt(topic: str, outline: str) -> str:
        return f"{topic} {outline}"

    templated = agent_step("summary", agent=with_model(), prompt="About {topic}: {outline.title} {outline}")
    called = agent_step("rate", agent=with_model(), prompt=prompt, output_key="summary")
    pipeline = Pipeline("notes", context=Notes, steps=outline >> templated)
    assert pipeline.keys_of(templated) == StepKeys(reads=("topic", "outline"), writes=("summary",))
    assert pipeline.keys_of(called) == StepKeys(reads=("topic", "outline"), writes=("summary",))


def test_run_inputs_are_required_fields_no_step_writes() -> None:
    pipeline = Pipeline("notes", context=Notes, steps=outline >> summary)
    assert pipeline.input_keys() == ("topic",)
    assert pipeline.initial_keys() == ("topic", "summary", "score", "tags")


# --- V-TYPE: annotations against context field types ----------------------------------------------------------


def test_type_parameter_and_return_mismatch_fail() -> None:
    @step(name="score")
    def scored(topic: int, outline: str) -> str:
        return f"{topic}{outline}"

    pipeline = Pipeline("notes", context=Notes, steps=outline >> scored)
    assert rendered(pipeline) == [
        "[V-TYPE] error at notes > step:score: parameter 'topic' is annotated int but key 'topic' holds str. "
        "Hint: annotate the parameter as str, or change the context field",
        "[V-TYPE] error at notes > step:score: returns str but writes key 'score', which holds int | None. "
        "Hint: return int | None, or change the context field",
    ]


def test_type_optional_key_into_required_parameter_fails() -> None:
    @step(output_keys=["tags"])
    def tag(summary: str) -> list[str]:
        return [summary]

    pipeline = Pipeline("notes", context=Notes, steps=outline >> tag)
    assert rendered(pipeline) == [
        "[V-TYPE] error at notes > step:tag: parameter 'summary' is annotated str but key 'summary' holds "
        "str | None. Hint: annotate the parameter as str | None, or change the context field"
    ]


def test_type_compatible_annotations_pass() -> None:
    @step(name="score")
    def scored(summary: str | None, tags: Sequence[str], outline: object) -> Literal[1, 2, 3]:
        return 1

    @step(output_keys=["tags"])
    def tag(topic: str) -> list[str]:
        return [topic]

    pipeline = Pipeline("notes", context=Notes, steps=outline >> tag >> scored)
    assert rendered(pipeline) == []


def test_type_agent_output_type_mismatch_fails() -> None:
    rate = agent_step(
        "score", agent=Agent("openai:gpt-5-mini", output_type=str, defer_model_check=True), prompt="{topic}"
    )
    listing = agent_step(
        "tags", agent=Agent("openai:gpt-5-mini", output_type=list[int], defer_model_check=True), prompt="{topic}"
    )
    pipeline = Pipeline("notes", context=Notes, steps=outline >> rate >> listing)
    assert rendered(pipeline) == [
        "[V-TYPE] error at notes > agent:score: the agent's output_type is str but key 'score' holds int | None. "
        "Hint: build the agent with output_type=int | None, or change the context field",
        "[V-TYPE] error at notes > agent:tags: the agent's output_type is list[int] but key 'tags' holds "
        "list[str]. Hint: build the agent with output_type=list[str], or change the context field",
    ]


def test_type_agent_default_str_output_into_int_key_fails() -> None:
    # an Agent without output_type outputs str
    rate = agent_step("score", agent=with_model(), prompt="{topic}")
    assert rendered(Pipeline("notes", context=Notes, steps=outline >> rate)) == [
        "[V-TYPE] error at notes > agent:score: the agent's output_type is str but key 'score' holds int | None. "
        "Hint: build the agent with output_type=int | None, or change the context field"
    ]


def test_type_agent_output_type_match_passes() -> None:
    rate = agent_step(
        "score", agent=Agent("openai:gpt-5-mini", output_type=int, defer_model_check=True), prompt="{topic}"
    )
    listing = agent_step(
        "tags", agent=Agent("openai:gpt-5-mini", output_type=list[str], defer_model_check=True), prompt="{topic}"
    )
    text = agent_step("summary", agent=with_model(), prompt="{outline}")
    pipeline = Pipeline("notes", context=Notes, steps=outline >> rate >> listing >> text)
    assert rendered(pipeline) == []


class Blob(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    data: bytes


class Unportable(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    raw: bytes
    z: complex = 0j
    anything: object = None
    grid: dict[tuple[int, int], str] = Field(default_factory=dict)
    blob: Blob | None = None
    chunks: list[bytes] = Field(default_factory=list)


def test_type_keys_that_do_not_round_trip_through_json_fail() -> None:
    hint = "Hint: every key is stored as JSON; choose a JSON-friendly type"
    bytes_problem = "bytes that are not UTF-8 do not survive JSON; use pydantic's Base64Bytes."
    pipeline = Pipeline("blobs", context=Unportable, steps=())
    assert rendered(pipeline) == [
        f"[V-TYPE] error at blobs > key:raw: key 'raw' (bytes) does not round-trip through JSON: {bytes_problem} "
        + hint,
        "[V-TYPE] error at blobs > key:z: key 'z' (complex) does not round-trip through JSON: complex numbers "
        f"have no JSON form. {hint}",
        "[V-TYPE] error at blobs > key:anything: key 'anything' (object) does not round-trip through JSON: a "
        f"plain `object` annotation loses the value's type in JSON; declare the concrete type. {hint}",
        "[V-TYPE] error at blobs > key:grid: key 'grid' (dict[tuple[int, int], str]) does not round-trip through "
        f"JSON: dict keys of type tuple[int, int] become JSON strings and cannot be read back. {hint}",
        "[V-TYPE] error at blobs > key:blob: key 'blob' (tests.test_validation.Blob | None) does not round-trip "
        f"through JSON: field 'data' of Blob: {bytes_problem} {hint}",
        "[V-TYPE] error at blobs > key:chunks: key 'chunks' (list[bytes]) does not round-trip through JSON: "
        f"{bytes_problem} {hint}",
    ]


class PlainTypedDict(typing.TypedDict):
    x: int


class ExtTypedDict(typing_extensions.TypedDict):
    x: int


class WithPlainTypedDict(BaseModel):
    # defer_build: pydantic refuses typing.TypedDict on 3.11 when it builds the schema, not when the class is made
    model_config = ConfigDict(defer_build=True)

    point: PlainTypedDict


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="typing.TypedDict works with pydantic from Python 3.12")
def test_type_typing_typeddict_on_311_fails() -> None:
    assert rendered(Pipeline("points", context=WithPlainTypedDict, steps=())) == [
        "[V-TYPE] error at points > key:point: key 'point' (PlainTypedDict) does not round-trip through JSON: "
        "pydantic cannot build a JSON schema for it (Please use `typing_extensions.TypedDict` instead of "
        "`typing.TypedDict` on Python < 3.12.). Hint: every key is stored as JSON; choose a JSON-friendly type"
    ]


class EncodedBlob(BaseModel):
    data: Base64Bytes


class Portable(BaseModel):
    point: ExtTypedDict
    when: date
    kind: Literal["a", "b"] = "a"
    counts: dict[str, int] = Field(default_factory=dict)
    by_id: dict[int, str] = Field(default_factory=dict)
    blob: EncodedBlob | None = None
    chunks: list[Base64Bytes] = Field(default_factory=list)
    pair: tuple[int, str] | None = None


def test_type_json_friendly_keys_pass() -> None:
    assert rendered(Pipeline("portable", context=Portable, steps=())) == []


class Ambiguous(BaseModel):
    when: str | datetime = ""
    amount: Decimal | None = None
    shape: tuple[int, ...] | list[int] = Field(default_factory=list)
    nested: EncodedBlob | None = None


class Unambiguous(BaseModel):
    when: datetime | int = 0
    maybe: str | None = None
    choice: Literal["a", "b"] | int = 0


def test_type_ambiguous_unions_are_warnings() -> None:
    assert rendered(Pipeline("ambiguous", context=Ambiguous, steps=())) == [
        "[V-TYPE] warning at ambiguous > key:when: key 'when' (str | datetime.datetime) is an ambiguous union: str "
        "and datetime are all JSON strings, so a stored value may load back as the wrong one. Hint: use a "
        "discriminated union, or wrap the members in models that JSON can tell apart",
        "[V-TYPE] warning at ambiguous > key:shape: key 'shape' (tuple[int, ...] | list[int]) is an ambiguous "
        "union: tuple[int, ...] and list[int] are all JSON arrays, so a stored value may load back as the wrong "
        "one. Hint: use a discriminated union, or wrap the members in models that JSON can tell apart",
    ]
    assert validate(Pipeline("ambiguous", context=Ambiguous, steps=())).ok  # warnings do not stop a build
    assert rendered(Pipeline("unambiguous", context=Unambiguous, steps=())) == []


# --- V-NAME: duplicate, illegal and reserved names ------------------------------------------------------------


def _writer(topic: str) -> str:
    return topic


def test_name_duplicate_illegal_and_reserved_fail() -> None:
    steps = [
        step(name="outline")(_writer),
        step(name="outline")(_writer),
        step(name="my-step", output_keys=["summary"])(_writer),
        step(name="1st", output_keys=["summary"])(_writer),
        step(name="flujo_inputs", output_keys=["summary"])(_writer),
        step(name="flujo_context", output_keys=["summary"])(_writer),
        step(name="class", output_keys=["summary"])(_writer),
        step(name="config", output_keys=["summary"])(_writer),
        step(name="flujo_join", output_keys=["summary"])(_writer),
        step(name="draft__i2", output_keys=["summary"])(_writer),
    ]
    pipeline = Pipeline("notes", context=Notes, steps=steps)
    rename = "Hint: rename the step (name=...)"
    legal = "Hint: use letters, digits and underscores, not starting with a digit"
    assert rendered(pipeline) == [
        "[V-NAME] error at notes > step:outline: step name 'outline' is used more than once in pipeline 'notes'. "
        "Hint: give each step a unique name (name=...)",
        f"[V-NAME] error at notes > step:my-step: step name 'my-step' is not a legal op name. {legal}",
        f"[V-NAME] error at notes > step:1st: step name '1st' is not a legal op name. {legal}",
        f"[V-NAME] error at notes > step:flujo_inputs: step name 'flujo_inputs' is reserved. {rename}",
        f"[V-NAME] error at notes > step:flujo_context: step name 'flujo_context' is reserved. {rename}",
        f"[V-NAME] error at notes > step:class: step name 'class' is reserved. {rename}",
        f"[V-NAME] error at notes > step:config: step name 'config' is reserved. {rename}",
        f"[V-NAME] error at notes > step:flujo_join: step name 'flujo_join' is reserved. {rename}",
        "[V-NAME] error at notes > step:draft__i2: step name 'draft__i2' contains '__', which separates the parts "
        "of derived op names. Hint: use single underscores (name=...)",
    ]


def test_name_illegal_pipeline_name_fails() -> None:
    assert rendered(Pipeline("my notes", context=Notes, steps=[outline])) == [
        "[V-NAME] error at my notes: pipeline name 'my notes' is not a legal Dagster name. "
        "Hint: use letters, digits and underscores, not starting with a digit"
    ]


def test_name_unique_legal_names_pass() -> None:
    steps = [
        step(name="outline")(_writer),
        step(name="summary_2", output_keys=["summary"])(_writer),
        step(name="_private", output_keys=["summary"])(_writer),
    ]
    assert rendered(Pipeline("notes_v2", context=Notes, steps=steps)) == []


# --- V-A1: agent step without agent or model ------------------------------------------------------------------


def test_agent_without_agent_or_model_fails() -> None:
    no_agent = agent_step("summary", agent=None, prompt="{outline}")
    no_model = agent_step(
        "summary_again", agent=Agent(defer_model_check=True), prompt="{outline}", output_key="summary"
    )
    pipeline = Pipeline("notes", context=Notes, steps=outline >> no_agent >> no_model)
    assert rendered(pipeline) == [
        "[V-A1] error at notes > agent:summary: agent step has no agent. "
        "Hint: pass a pydantic-ai Agent: agent_step(name, agent=Agent(...), prompt=...)",
        "[V-A1] error at notes > agent:summary_again: agent step has no model: neither the agent nor the step "
        "names one. Hint: build the agent with a model ('provider:model', defer_model_check=True) or pass model=",
    ]


def test_agent_with_model_on_agent_or_step_passes() -> None:
    on_agent = agent_step("summary", agent=with_model(), prompt="{outline}")
    on_step = agent_step(
        "summary_again",
        agent=Agent(defer_model_check=True),
        prompt="{outline}",
        output_key="summary",
        model="openai:gpt-5",
    )
    assert on_agent.model_id() == "openai:gpt-5-mini"
    assert on_step.model_id() == "openai:gpt-5"
    assert rendered(Pipeline("notes", context=Notes, steps=outline >> on_agent >> on_step)) == []


# --- the report --------------------------------------------------------------------------------------------------


def test_report_counts_and_renders_every_finding_across_pipelines() -> None:
    first = Pipeline("first", context=Notes, steps=summary >> outline)
    second = Pipeline("second", context=Notes, steps=outline >> agent_step("summary", agent=None, prompt="{outline}"))
    report = validate([first, second])
    assert isinstance(report, ValidationReport)
    assert not report.ok
    assert [f.code for f in report.errors] == ["V-CTX1", "V-A1"]
    assert report.warnings == ()
    assert report.render().splitlines() == [
        "[V-CTX1] error at first > step:summary: reads key 'outline' before any step writes it, and it has no "
        "default. Hint: write 'outline' in an earlier step, or give the field a default",
        "[V-A1] error at second > agent:summary: agent step has no agent. "
        "Hint: pass a pydantic-ai Agent: agent_step(name, agent=Agent(...), prompt=...)",
        "2 error(s), 0 warning(s)",
    ]
    assert validate(Pipeline("ok", context=Notes, steps=outline >> summary)).ok


# --- build_definitions and composition ----------------------------------------------------------------------------


def test_build_definitions_lists_every_error_finding() -> None:
    @step(name="summary")
    def misspelt(topic: str, outlin: str) -> str:
        return topic + outlin

    first = Pipeline("first", context=Notes, steps=outline >> misspelt)
    second = Pipeline("second", context=Notes, steps=outline >> agent_step("summary", agent=None, prompt="{outline}"))
    with pytest.raises(ConfigurationError) as caught:
        build_definitions(pipelines=[first, second])
    ctx2 = (
        "[V-CTX2] error at first > step:summary: reads unknown key 'outlin': it is not a field of Notes. "
        "Hint: did you mean 'outline'?"
    )
    a1 = (
        "[V-A1] error at second > agent:summary: agent step has no agent. "
        "Hint: pass a pydantic-ai Agent: agent_step(name, agent=Agent(...), prompt=...)"
    )
    assert str(caught.value) == (f"flujo_dagster found 2 error(s) in the pipeline definitions:\n  {ctx2}\n  {a1}")
    assert [f.render() for f in caught.value.findings] == [ctx2, a1]


def _valid_pipelines() -> list[Pipeline]:
    plain = Pipeline("notes_job", context=Notes, steps=outline >> summary)
    with_assets = Pipeline(
        "notes_assets",
        context=Notes,
        steps=outline >> agent_step("summary", agent=with_model(), prompt="{outline}"),
        assets=["outline", "summary"],
    )
    return [plain, with_assets]


@pytest.mark.parametrize("pipeline", _valid_pipelines(), ids=lambda p: p.name)
def test_build_definitions_of_a_valid_pipeline_is_loadable(pipeline: Pipeline) -> None:
    defs = build_definitions(pipelines=[pipeline])
    Definitions.validate_loadable(defs)
    assert isinstance(defs.resolve_job_def(pipeline.name), JobDefinition)


def test_build_definitions_of_two_valid_pipelines_is_loadable() -> None:
    defs = build_definitions(pipelines=_valid_pipelines())
    Definitions.validate_loadable(defs)
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"notes_job", "notes_assets"}


def test_composing_pipelines_with_the_same_context_concatenates_steps_and_assets() -> None:
    head = Pipeline("head", context=Notes, steps=[outline], assets=["outline"])
    tail = Pipeline("tail", context=Notes, steps=[summary], assets=["summary", "outline"])
    joined = head >> tail
    assert joined.name == "head"
    assert joined.steps == (outline, summary)
    assert joined.assets == ("outline", "summary")
    assert rendered(joined) == []
    assert isinstance(outline >> summary, StepSequence)


class Other(BaseModel):
    topic: str


def test_composing_pipelines_with_different_contexts_raises() -> None:
    head = Pipeline("head", context=Notes, steps=[outline])
    other = Pipeline("other", context=Other, steps=())
    with pytest.raises(ConfigurationError) as caught:
        head >> other
    assert str(caught.value) == (
        "Cannot compose pipeline 'head' (context Notes) with pipeline 'other' (context Other): both must use the "
        "same context model."
    )


def test_scale_warns_past_250_expanded_ops_and_refuses_past_1200() -> None:
    def chain(n: int) -> list[Step]:
        return [step(name=f"s{i}", input_keys=["topic"], output_keys=["summary"])(_writer) for i in range(n)]

    big = Pipeline("big", context=Notes, steps=[Loop("again", body=chain(3), until=_never, max_iterations=100)])
    assert rendered(big) == [
        "[V-SCALE] warning at big: the pipeline expands to 403 ops (big > loop:again alone expands to 401), more "
        "than 250. Hint: mark loops and long step chains inline=True (or wrap steps in Group(..., inline=True)) so "
        "each runs in one op"
    ]
    huge = Pipeline("huge", context=Notes, steps=chain(1300))
    assert [f.code + " " + f.severity for f in validate(huge).findings] == ["V-SCALE error"]
    inline = Pipeline("huge", context=Notes, steps=[Group("all", steps=chain(1300), inline=True)])
    assert rendered(inline) == []


def _never(summary: str) -> bool:
    return False


class _WithCallable(BaseModel):
    x: int
    fn: Callable[[int], int] | None = None
    doubled: int | None = None


def test_a_parameterised_callable_field_is_judged_not_crashed_on() -> None:
    @step
    def doubled(x: int) -> int:
        return 2 * x

    report = validate([Pipeline("cb", context=_WithCallable, steps=[doubled])])
    assert not report.errors  # a Callable's parameter list is no type to judge (it once raised TypeError)
