"""What validation decides without dagster, kept in step with Dagster's own checks (cron strings, names, check
output names, partition keys, timezones, default names), and the exact findings of the rules built on them."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from dagster import AssetCheckSpec, AssetKey
from dagster._core.definitions.partitions.utils.base import INVALID_PARTITION_SUBSTRINGS as DAGSTER_SUBSTRINGS
from dagster._core.definitions.utils import VALID_NAME_REGEX_STR, is_valid_name
from dagster._time import get_timezone
from dagster._utils.schedules import has_out_of_range_cron_interval, is_valid_cron_string
from pydantic import BaseModel, create_model

from flujo_dagster import (
    Check,
    ConfigurationError,
    DailyPartitions,
    FlujoDagsterTranslator,
    Pipeline,
    Schedule,
    StaticPartitions,
    build_definitions,
    step,
    validate,
)
from flujo_dagster.validation.cron import cron_problem, cron_step_too_large
from flujo_dagster.validation.names import (
    DAGSTER_NAME_PATTERN,
    INVALID_PARTITION_SUBSTRINGS,
    asset_identifier,
    check_identifier,
    is_dagster_name,
    is_timezone,
)
from flujo_dagster.validation.naming import DEFAULT_NAMING

# --- cron strings ------------------------------------------------------------------------------------------------

_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES: tuple[list[str], ...] = ([], [], ["l", "L"], ["jan", "FEB", "dec"], ["mon", "SUN", "sat"])
_TOKENS = ["*", "?", "l", "L", "0", "1", "5", "7", "12", "23", "24", "30", "31", "59", "60", "jan", "mon", "x", ""]


def _value(r: random.Random, index: int) -> str:
    low, high = _RANGES[index]
    roll = r.random()
    if roll < 0.75:
        return str(r.randint(low, high))
    if roll < 0.9 and _NAMES[index]:
        return r.choice(_NAMES[index])
    return r.choice(["*", str(high + 1), "x", "?", "l", "-1"])


def _element(r: random.Random, index: int, value: Callable[[random.Random, int], str]) -> str:
    element = value(r, index) if r.random() < 0.85 else "*"
    if r.random() < 0.3:
        element = f"{element}-{value(r, index)}"
    if r.random() < 0.25:
        element = f"{element}/{r.choice(['0', '1', '2', '5', '7', '15', '30', '90'])}"
    if index == 4 and r.random() < 0.15:
        element = f"{element}#{r.choice(['0', '1', '2', '5', '6'])}"
    if index == 4 and r.random() < 0.05:
        element = "l" + r.choice(["1", "5", "7", "8"])
    return element


def _cron(r: random.Random, value: Callable[[random.Random, int], str]) -> str:
    if r.random() < 0.02:
        return r.choice(["@daily", "@HOURLY", "@weekly", "@monthly", "@yearly", "@annually", "@midnight", "@every"])
    fields = r.choice([5, 5, 5, 5, 4, 6])
    return " ".join(",".join(_element(r, i % 5, value) for _ in range(r.choice([1, 1, 2, 3]))) for i in range(fields))


EDGE_CRONS = [
    "0 6 * * *",
    "*/15 9-17 * * mon-fri",
    "0 0 L * *",
    "0 6 15-l * *",
    "0 6 l-3 * *",
    "0 0 0-5 * *",
    "* * * * 7",
    "* * * * 1-7",
    "* * * * 1#6",
    "* * * * 1#2,3",
    "* * * * mon#2,tue#3",
    "* * * * l5",
    "* * ? * ?",
    "? * * * *",
    "* * * jan-jan *",
    "5-2 * * * *",
    "60-2 * * * *",
    "5/0 * * * *",
    "-5 * * * *",
    "* * 31 2 *",
    "* * 30 2,3 *",
    "0 6 * * * *",
    "0 6 * *",
    "@DAILY",
    "@daily ",
    "*/90 * * * *",
    "0-59/90 * * * *",
]


@pytest.mark.parametrize("cron", EDGE_CRONS)
def test_cron_check_agrees_with_dagster_on_edge_cases(cron: str) -> None:
    assert (cron_problem(cron) is None) is is_valid_cron_string(cron), cron_problem(cron)
    if cron_problem(cron) is None:
        assert cron_step_too_large(cron) is has_out_of_range_cron_interval(cron)


@pytest.mark.parametrize("seed", [1, 2])
def test_cron_check_agrees_with_dagster_on_generated_cron_strings(seed: int) -> None:
    """8,000 cron strings per seed, from field-aware values (about one in twelve valid) and from loose tokens."""
    r = random.Random(seed)
    loose: Callable[[random.Random, int], str] = lambda r, i: r.choice(_TOKENS)  # noqa: E731
    crons = [_cron(r, _value) for _ in range(6_000)] + [_cron(r, loose) for _ in range(2_000)]
    disagreements = [c for c in crons if (cron_problem(c) is None) is not is_valid_cron_string(c)]
    assert disagreements == []
    valid = [c for c in crons if cron_problem(c) is None]
    assert len(valid) > 300  # the generator reaches both sides
    assert [c for c in valid if cron_step_too_large(c) is not has_out_of_range_cron_interval(c)] == []


def test_hashed_and_random_cron_values_are_refused() -> None:
    """Dagster refuses `H` (it passes no hash id) and accepts `R`, a random minute picked at every load; flujo
    refuses both, so that a schedule fires when its definition says."""
    assert not is_valid_cron_string("h * * * *")
    assert cron_problem("h * * * *") == "'h': hashed (H) and random (R) values are not supported in schedules"
    assert cron_problem("R 6 * * *") == "'r': hashed (H) and random (R) values are not supported in schedules"


# --- names, identifiers, partition keys, timezones ---------------------------------------------------------------

NAMES = [
    "digest",
    "Digest_2",
    "_x",
    "2x",
    "with space",
    "café",
    "a-b",
    "a.b",
    "",
    "context",
    "input",
    "class",
    "x" * 300,
]


def test_name_pattern_and_reserved_names_are_dagsters() -> None:
    assert DAGSTER_NAME_PATTERN == VALID_NAME_REGEX_STR
    assert [is_dagster_name(n) for n in NAMES] == [is_valid_name(n) for n in NAMES]


@pytest.mark.parametrize("part", NAMES[:9])
def test_asset_and_check_identifiers_are_dagsters(part: str) -> None:
    path = ["pipe", part]
    assert asset_identifier(path) == AssetKey(path).to_python_identifier()
    for check in ["flujo_type", "not.empty", part or "x"]:
        assert check_identifier(path, check) == AssetCheckSpec(check, asset=AssetKey(path)).get_python_identifier()


def test_partition_key_substrings_are_dagsters() -> None:
    assert list(INVALID_PARTITION_SUBSTRINGS) == list(DAGSTER_SUBSTRINGS)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Madrid", "EST5EDT", "Etc/GMT+3", "Mars/Base", "", "../etc", "x" * 300])
def test_timezones_flujo_accepts_dagster_accepts(zone: str) -> None:
    """Dagster loads timezones with zoneinfo, as flujo's schedules do (Dagster also takes 'utc', which flujo
    refuses because its schedule ticks load the zone with zoneinfo too)."""
    if is_timezone(zone):
        assert get_timezone(zone) is not None
    else:
        with pytest.raises(Exception):  # noqa: B017 - whatever zoneinfo raises, Dagster lets through
            get_timezone(zone)


class Note(BaseModel):
    text: str
    summary: str = ""


@step
def summary(text: str) -> str:
    return text


def test_default_names_are_the_translators() -> None:
    translator = FlujoDagsterTranslator()
    pipeline = Pipeline("notes", context=Note, steps=[summary], assets=["summary"])
    assert DEFAULT_NAMING.get_job_name(pipeline) == translator.get_job_name(pipeline)
    assert (
        list(DEFAULT_NAMING.get_asset_key(pipeline, "summary").path)
        == translator.get_asset_key(pipeline, "summary").path
    )
    assert list(DEFAULT_NAMING.get_context_asset_key(pipeline).path) == translator.get_context_asset_key(pipeline).path


# --- exact findings of the rules built on them -------------------------------------------------------------------


def lines(pipelines: Pipeline | list[Pipeline], **options: Any) -> list[str]:
    """Every finding, as `str()` shows it; build_definitions raises with the same errors."""
    report = validate(pipelines, **options)
    if report.errors:
        with pytest.raises(ConfigurationError) as raised:
            build_definitions(pipelines=[pipelines] if isinstance(pipelines, Pipeline) else pipelines, **options)
        assert raised.value.findings == report.errors
    return [str(f) for f in report.findings]


def scheduled(cron: str, timezone: str = "UTC", name: str | None = None) -> Pipeline:
    schedule = Schedule(cron=cron, timezone=timezone, inputs={"text": "hi"}, name=name)
    return Pipeline("notes", context=Note, steps=[summary], schedule=schedule)


CRON_HINT = (
    "Hint: write five fields, minute hour day-of-month month day-of-week (e.g. '0 6 * * *'), or an alias such as "
    "'@daily'"
)


@pytest.mark.parametrize(
    ("cron", "problem"),
    [
        ("99 6 * * *", "99 is out of range for the minute field (0-59)"),
        ("0 6 * * * *", "it has 6 fields; Dagster reads exactly 5 (minute hour day-of-month month day-of-week)"),
        ("daily", "it has 1 field; Dagster reads exactly 5 (minute hour day-of-month month day-of-week)"),
        ("0 6 30 2 *", "February has no day 30"),
        ("0 6 * * funday", "'funday' is not a value of the day of week field"),
        ("0 6 * * 1#2,3", "the day of week field mixes plain days with nth-weekday (#) values"),
    ],
)
def test_a_cron_string_dagster_refuses(cron: str, problem: str) -> None:
    assert lines(scheduled(cron)) == [
        f"[SCHED-003] error at notes > schedule: Dagster refuses the cron string {cron!r}: {problem}. {CRON_HINT}"
    ]


def test_a_cron_step_past_its_range_is_a_warning() -> None:
    assert lines(scheduled("*/90 * * * *")) == [
        "[SCHED-003] warning at notes > schedule: the cron string '*/90 * * * *' steps past its field's range, so "
        "Dagster runs it more often than the step suggests ('*/90' minutes fires every hour). Hint: use a step "
        "within the field's range, or a coarser field ('0 */3 * * *' for every 3 hours)"
    ]


def test_an_unknown_timezone_of_a_schedule_and_of_daily_partitions() -> None:
    hint = "Hint: use an IANA timezone name such as 'UTC' or 'Europe/Madrid'"
    assert lines(scheduled("0 6 * * *", timezone="Europe/Nowhere")) == [
        f"[SCHED-004] error at notes > schedule: unknown timezone 'Europe/Nowhere'. {hint}"
    ]
    daily = DailyPartitions(start="2026-11-01", timezone="Mars/Base", input_key="text")
    assert lines(Pipeline("notes", context=Note, steps=[summary], partitions=daily)) == [
        f"[PART-002] error at notes > partitions: unknown timezone 'Mars/Base'. {hint}"
    ]


def test_schedule_names_dagster_refuses_or_two_pipelines_share() -> None:
    hint = "Hint: give the schedule a unique name of letters, digits and underscores (Schedule(name=...))"
    assert lines(scheduled("0 6 * * *", name="every morning")) == [
        "[SCHED-005] error at notes > schedule: the schedule's name 'every morning' is not a legal Dagster name: "
        f"Dagster names use only ASCII letters, digits and underscores. {hint}"
    ]
    other = Pipeline(
        "other",
        context=Note,
        steps=[summary],
        schedule=Schedule(cron="0 7 * * *", inputs={"text": "hi"}, name="notes_schedule"),
    )
    assert lines([scheduled("0 6 * * *"), other]) == [
        f"[SCHED-005] error at other > schedule: pipeline 'notes' already has a schedule named 'notes_schedule'. {hint}"
    ]


def test_a_static_partition_key_dagster_refuses() -> None:
    parts = StaticPartitions(keys=["en", "a...b", "tab\there"], input_key="text")
    assert lines(Pipeline("notes", context=Note, steps=[summary], partitions=parts)) == [
        "[PART-003] error at notes > partitions: Dagster refuses partition key 'a...b': it holds '...'. Hint: "
        "partition keys may not hold '...' or control characters (tab, newline, ...)",
        "[PART-003] error at notes > partitions: Dagster refuses partition key 'tab\\there': it holds '\\t'. Hint: "
        "partition keys may not hold '...' or control characters (tab, newline, ...)",
    ]


PART4_HINT = (
    "Hint: use keys of at most 100 characters without '/', '\\' or control characters, other than '.' and '..' (each "
    "partition's asset values are stored in a file named after its key)"
)


def test_a_static_partition_key_that_cannot_name_a_stored_file() -> None:
    """`../x` would climb out of the storage root, `sub/../x` would alias `x`, 300 characters fail at run time:
    refused when the definitions load (the IO manager stores them safely anyway: tests/test_storage_safety.py)."""
    keys = ["x", "../x", "sub/../x", "/abs", "back\\slash", ".", "..", "soh\x01", "del\x7f", "a" * 101, "a" * 100]
    parts = StaticPartitions(keys=keys, input_key="text")
    bad = "cannot name a stored file"
    assert lines(Pipeline("notes", context=Note, steps=[summary], partitions=parts)) == [
        f"[PART-004] error at notes > partitions: partition key '../x' {bad}: it holds '/', a path separator. "
        f"{PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key 'sub/../x' {bad}: it holds '/', a path separator. "
        f"{PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key '/abs' {bad}: it holds '/', a path separator. "
        f"{PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key 'back\\\\slash' {bad}: it holds '\\\\', a path "
        f"separator. {PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key '.' {bad}: it is '.', which names a folder, not a "
        f"file. {PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key '..' {bad}: it is '..', which names a folder, not a "
        f"file. {PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key 'soh\\x01' {bad}: it holds the control character(s) "
        f"'\\x01'. {PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key 'del\\x7f' {bad}: it holds the control character(s) "
        f"'\\x7f'. {PART4_HINT}",
        f"[PART-004] error at notes > partitions: partition key {'a' * 101!r} {bad}: it is 101 characters long (at "
        f"most 100). {PART4_HINT}",
    ]


class Climbing(FlujoDagsterTranslator):
    def get_asset_key(self, pipeline: Pipeline, key: str) -> AssetKey:
        return AssetKey(["..", "..", "climbed"]) if key == "summary" else super().get_asset_key(pipeline, key)

    def get_context_asset_key(self, pipeline: Pipeline) -> AssetKey:
        return AssetKey(["reports", "a/b"])


def test_a_translators_asset_keys_that_cannot_name_a_stored_file() -> None:
    pipeline = Pipeline("notes", context=Note, steps=[summary], assets=["summary"], context_asset=True)
    hint = (
        "Hint: return asset key parts of at most 100 characters without '/', '\\' or control characters, other "
        "than '.' and '..', from the translator (each asset's latest value is stored in a file named after its key)"
    )
    assert lines(pipeline, translator=Climbing()) == [
        "[V-NAME] error at notes > key:summary: the asset key ['..', '..', 'climbed'] of key 'summary' cannot name a "
        f"stored file: part '..': it is '..', which names a folder, not a file. {hint}",
        "[V-NAME] error at notes: the final context's asset key ['reports', 'a/b'] cannot name a stored file: part "
        f"'a/b': it holds '/', a path separator. {hint}",
    ]
    assert lines(pipeline) == []


def _checked(*checks: Check, assets: tuple[str, ...] = ("summary",)) -> Pipeline:
    return Pipeline("notes", context=Note, steps=[summary], assets=list(assets), checks=list(checks))


def ok(value: object) -> bool:
    return bool(value)


@pytest.mark.parametrize("name", ["not empty", "café", "not-empty"])
def test_a_check_name_dagster_refuses(name: str) -> None:
    assert lines(_checked(Check("summary", fn=ok, name=name))) == [
        f"[CHECK-003] error at notes > check:{name}: check {name!r} on key 'summary' cannot be named so: Dagster "
        f"names the check's output 'notes__summary_{name}', and Dagster names use only ASCII letters, digits and "
        "underscores. Hint: name the check with letters, digits and underscores (Check(..., name=...))"
    ]


def test_a_check_on_a_key_that_is_not_an_asset() -> None:
    hint = "Hint: add 'text' to assets=[...], or check a key that is an asset"
    assert lines(_checked(Check("text", fn=ok))) == [
        "[CHECK-001] error at notes > check:ok: check 'ok' is on key 'text', which is not in assets=['summary'], so "
        f"it would never run. {hint}"
    ]
    assert lines(_checked(Check("text", fn=ok), assets=())) == [
        "[CHECK-001] error at notes > check:ok: check 'ok' is on key 'text', which is not in assets= (the pipeline "
        f"has no assets), so it would never run. {hint}"
    ]


def test_checks_reported_under_one_name() -> None:
    hint = "Hint: give each check of a key its own name"
    assert lines(
        _checked(
            Check("summary", fn=ok, name="flujo_type"),
            Check("summary", fn=ok, name="a.b"),
            Check("summary", fn=ok, name="a_b"),
        )
    ) == [
        "[CHECK-002] error at notes > check:flujo_type: check 'flujo_type' on key 'summary' has the name of flujo's "
        "own type check. Hint: rename the check (Check(..., name=...))",
        "[CHECK-002] error at notes > check:a_b: check 'a_b' on key 'summary' and check 'a.b' on key 'summary' would "
        f"both be reported as 'notes__summary_a_b'. {hint}",
    ]


def test_context_field_names_dagster_refuses_as_assets() -> None:
    """A field name with a space or a non-ASCII letter is fine as a key, but Dagster cannot name an asset's check
    outputs after it; nor may an asset take the final context's output name."""
    fields: dict[str, Any] = {
        "text": (str, ...),
        "with space": (str, ""),
        "café": (str, ""),
        "final_context": (str, ""),
    }
    odd = create_model("Odd", **fields)
    writes = step(name="fill", input_keys=["text"], output_keys=["with space", "café", "final_context"])(
        lambda text: odd()
    )
    pipeline = Pipeline("odd", context=odd, steps=[writes], assets=["with space", "café", "final_context"])
    assert lines(Pipeline("odd", context=odd, steps=[writes])) == []
    assert lines(pipeline) == [
        "[V-NAME] error at odd > key:with space: key 'with space' cannot be an asset: Dagster names its checks' "
        "outputs after the asset key ('odd__with space_flujo_type'), and Dagster names use only ASCII letters, "
        "digits and underscores. Hint: rename the context field (letters, digits and underscores), or leave it out "
        "of assets=",
        "[V-NAME] error at odd > key:café: key 'café' cannot be an asset: Dagster names its checks' outputs after the "
        "asset key ('odd__café_flujo_type'), and Dagster names use only ASCII letters, digits and underscores. Hint: "
        "rename the context field (letters, digits and underscores), or leave it out of assets=",
        "[V-NAME] error at odd > key:final_context: key 'final_context' cannot be an asset: the final context's "
        "output (flujo_context's) has that name. Hint: rename the context field, or leave it out of assets=",
    ]


def test_pipeline_names_dagster_or_flujo_reserve() -> None:
    assert lines(Pipeline("context", context=Note, steps=[summary])) == [
        "[V-NAME] error at context: pipeline name 'context' is reserved (by Dagster, or for flujo's own jobs). "
        "Hint: rename the pipeline"
    ]
    assert lines(Pipeline("flujo_decide", context=Note, steps=[summary])) == [
        "[V-NAME] error at flujo_decide: pipeline name 'flujo_decide' is reserved (by Dagster, or for flujo's own "
        "jobs). Hint: rename the pipeline"
    ]
    assert lines(Pipeline("a__b", context=Note, steps=[summary])) == [
        "[V-NAME] error at a__b: pipeline name 'a__b' contains '__', which separates the parts of derived op names. "
        "Hint: use single underscores"
    ]


def test_jobs_and_graphs_of_one_code_location_do_not_collide() -> None:
    notes = Pipeline("notes", context=Note, steps=[summary], assets=["summary"])
    again = Pipeline("notes", context=Note, steps=[summary])
    graph = Pipeline("notes_graph", context=Note, steps=[summary])
    assert lines([notes, again, graph]) == [
        "[V-JOB] error at notes: pipeline 'notes' cannot join this code location: another pipeline is named 'notes' "
        "too. Hint: give each pipeline a unique name",
        "[V-JOB] error at notes_graph: pipeline 'notes_graph' cannot join this code location: it defines graph "
        "'notes_graph', which pipeline 'notes' defines too (an asset pipeline's graph is named '<pipeline>_graph', "
        "and an asset job's graph after the job). Hint: give each pipeline a unique name",
    ]
    assert [f.pipeline for f in validate([notes, again, graph]).errors] == ["notes", "notes_graph"]


class Renaming(FlujoDagsterTranslator):
    def get_job_name(self, pipeline: Pipeline) -> str:
        return {"first": "shared", "second": "shared", "third": "bad name"}.get(pipeline.name, pipeline.name)


def test_a_translators_job_names_are_validated() -> None:
    pipelines = [Pipeline(n, context=Note, steps=[summary]) for n in ("first", "second", "third")]
    assert lines(pipelines, translator=Renaming()) == [
        "[V-JOB] error at second: pipeline 'second' cannot join this code location: pipeline 'first' compiles to "
        "job 'shared' too. Hint: give each pipeline a unique name",
        "[V-JOB] error at third: pipeline 'third' cannot join this code location: its job name 'bad name' is not a "
        "legal job name: Dagster names use only ASCII letters, digits and underscores, and names starting 'flujo_' "
        "are reserved. Hint: return a legal name from the translator's get_job_name",
    ]
    assert lines(pipelines) == []
