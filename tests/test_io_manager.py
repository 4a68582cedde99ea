"""The flujo IO manager: typed JSON round trips, loud and precise errors on bad files, quiet, and no pickle.

- every value of a context key loads back as exactly its declared type (hypothesis over a context model with
  builtins, unions, Literal, Annotated, nested models, lists and dicts of models, datetimes, Decimals, enums,
  a TypedDict, and floats with NaN and infinities), directly and through real Dagster runs;
- a corrupt or hand-edited file, or a value that no longer matches its type, raises `StorageError` naming the
  run, the step, the key and the file, also when a re-execution from failure loads it;
- fan-in inputs load each element with its producer's type;
- the IO manager writes no event of its own, and nothing in the package pickles.
"""

from __future__ import annotations

import ast
import enum
import hashlib
import hmac
import io
import json
import math
import tokenize
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NewType, NotRequired, cast

import pytest
from annotated_types import Ge, Le, MaxLen
from dagster import Any as DagsterAny
from dagster import (
    AssetIn,
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterType,
    Definitions,
    DependencyDefinition,
    EventLogEntry,
    GraphDefinition,
    In,
    JobDefinition,
    MultiDependencyDefinition,
    OpDefinition,
    Out,
    ReexecutionOptions,
    asset,
    define_asset_job,
    execute_job,
    op,
    reconstructable,
)
from dagster_shared.error import SerializableErrorInfo
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from typing_extensions import TypedDict
from upath import UPath

import flujo_dagster
from flujo_dagster import (
    Pipeline,
    PydanticJsonIOManager,
    StorageError,
    build_definitions,
    load_final_context,
    run_pipeline,
    step,
)
from flujo_dagster.adapter.storage.io_manager import StoredKey
from flujo_dagster.adapter.storage.types import key_type

# --- a context model with many kinds of fields -------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(TypedDict):
    x: float
    y: int
    label: NotRequired[str]


class Leaf(BaseModel):
    name: str
    weight: float
    when: datetime


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


UserId = NewType("UserId", int)
Pet = Annotated[Cat | Dog, Field(discriminator="kind")]
# JSON keeps a UTC offset, not a zone name, and pydantic writes offsets in whole minutes: aware datetimes are
# generated with such offsets.
_OFFSETS = st.integers(min_value=-23 * 60, max_value=23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
Aware = Annotated[datetime, st.datetimes(timezones=_OFFSETS)]


class Everything(BaseModel):
    text: str
    count: int
    ratio: float
    ratios: list[float]
    flag: bool
    nothing: None
    money: Annotated[Decimal, Field(allow_inf_nan=True)]
    day: date
    moment: datetime
    aware: Aware
    clock: time
    span: timedelta
    ident: uuid.UUID
    user: UserId
    color: Color
    level: Level
    mode: Literal["fast", "slow", 3]
    maybe: int | None
    either: int | str
    bounded: Annotated[int, Ge(0), Le(100)]
    short: Annotated[str, MaxLen(5)]
    point: Point
    leaf: Leaf
    maybe_leaf: Leaf | None
    leaves: list[Leaf]
    by_name: dict[str, Leaf]
    by_id: dict[int, str]
    pet: Cat | Dog
    pets: list[Pet]
    pair: tuple[int, float]
    tags: frozenset[str]
    nested: dict[str, list[int | None]]


NAN_LEAF = Leaf(name="nan", weight=math.nan, when=datetime(2024, 2, 29, 23, 59, 59, 999999))
SPECIAL = Everything(
    text="NaN",
    count=-(2**70),
    ratio=math.nan,
    ratios=[math.inf, -math.inf, math.nan, -0.0, 5e-324, 1.7976931348623157e308],
    flag=False,
    nothing=None,
    money=Decimal("NaN"),
    day=date(1, 1, 1),
    moment=datetime(9999, 12, 31, 23, 59, 59, 999999),
    aware=datetime(2024, 3, 31, 2, 30, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    clock=time(0, 0),
    span=timedelta(days=-1, microseconds=1),
    ident=uuid.UUID(int=0),
    user=UserId(7),
    color=Color.GREEN,
    level=Level.HIGH,
    mode=3,
    maybe=None,
    either="42",
    bounded=100,
    short="",
    point={"x": -math.inf, "y": 0},
    leaf=NAN_LEAF,
    maybe_leaf=None,
    leaves=[NAN_LEAF, Leaf(name="", weight=math.inf, when=datetime(1970, 1, 1))],
    by_name={"inf": Leaf(name="inf", weight=-math.inf, when=datetime(2000, 1, 1)), "": NAN_LEAF},
    by_id={-1: "minus one", 0: ""},
    pet=Dog(kind="dog", good=True),
    pets=[Cat(kind="cat", lives=9), Dog(kind="dog", good=False)],
    pair=(0, math.nan),
    tags=frozenset({"a", ""}),
    nested={"": [None, 0], "x": []},
)


def assert_same(expected: object, actual: object, where: str = "value") -> None:
    """Equal and of exactly the same types all the way down; NaN equals NaN, -0.0 differs from 0.0."""
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, BaseModel):
        assert isinstance(actual, BaseModel)
        for name in type(expected).model_fields:
            assert_same(getattr(expected, name), getattr(actual, name), f"{where}.{name}")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), f"{where}: keys {actual} != {expected}"
        for k in expected:
            assert_same(expected[k], actual[k], f"{where}[{k!r}]")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), f"{where}: {actual} != {expected}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_same(e, a, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(actual, float)
        if math.isnan(expected):
            assert math.isnan(actual), f"{where}: {actual} != nan"
        else:
            assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected), f"{where}"
    elif isinstance(expected, Decimal):
        assert str(actual) == str(expected), f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, enum.Enum):
        assert actual is expected, f"{where}: {actual!r} is not {expected!r}"
    elif isinstance(expected, datetime | time):
        assert isinstance(actual, datetime | time)
        assert actual == expected and actual.utcoffset() == expected.utcoffset(), f"{where}: {actual!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def test_assert_same_is_strict() -> None:
    """The comparison the round trips rely on tells NaN, types, signs and enum members apart."""
    assert_same(SPECIAL, SPECIAL.model_copy(deep=True))
    for expected, actual in [
        (math.nan, 0.0),
        (0.0, -0.0),
        (1, 1.0),
        (Color.RED, "red"),
        (Level.LOW, 1),
        (Decimal("1.0"), Decimal("1.00")),
        ([1.0], (1.0,)),
        (NAN_LEAF, NAN_LEAF.model_dump()),
        (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
    ]:
        with pytest.raises(AssertionError):
            assert_same(expected, actual)


# --- direct round trips through dump / write / read (the fast path) ----------------------------------------

HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def round_trip(path: UPath, stored: StoredKey, value: object) -> object:
    PydanticJsonIOManager.write(path, PydanticJsonIOManager.dump(stored, value, path))
    return PydanticJsonIOManager.read(path, stored, where="run r1, step s1")


@settings(HYPOTHESIS, max_examples=60)
@given(value=st.from_type(Everything))
@example(value=SPECIAL)
def test_context_model_round_trips_exactly(value: Everything, tmp_path: Path) -> None:
    loaded = round_trip(
        UPath(tmp_path) / "run" / "step" / "everything.json", StoredKey("everything", Everything), value
    )
    assert_same(value, loaded)


# each field's annotation as the compiler sees it: a key's declared type (constraints kept as `Annotated`)
KEY_TYPES = Pipeline("keys", context=Everything, steps=()).fields


@pytest.mark.parametrize("name", list(KEY_TYPES))
@settings(HYPOTHESIS, max_examples=30)
@given(data=st.data())
def test_each_field_type_round_trips_as_a_key(name: str, data: st.DataObject, tmp_path: Path) -> None:
    """Each key is stored on its own: top-level unions, Literal, Annotated, TypedDict, NaN floats..."""
    stored = StoredKey(name, KEY_TYPES[name])
    value = data.draw(st.from_type(cast(Any, KEY_TYPES[name])))
    assert_same(value, round_trip(UPath(tmp_path) / f"{name}.json", stored, value))
    special = getattr(SPECIAL, name)  # the same field's edge value (NaN, infinities, extreme dates...)
    assert_same(special, round_trip(UPath(tmp_path) / f"{name}.json", stored, special))


def test_stored_file_is_a_readable_json_envelope_that_keeps_nan_and_infinities(tmp_path: Path) -> None:
    path = UPath(tmp_path) / "ratios.json"
    data = PydanticJsonIOManager.dump(StoredKey("ratios", list[float]), SPECIAL.ratios, path)
    PydanticJsonIOManager.write(path, data)
    body = (
        b'{"flujo":2,"key":"ratios","type":"list[float]",'
        b'"value":[Infinity,-Infinity,NaN,-0.0,5e-324,1.7976931348623157e+308]}'
    )
    assert path.read_bytes() == seal(body, place="ratios.json")
    digest = hashlib.sha256(b"ratios.json\n" + body).hexdigest()
    assert path.read_bytes().endswith(f',"hash":"sha256:{digest}"}}'.encode())
    loaded = PydanticJsonIOManager.read(path, StoredKey("ratios", list[float]), where="run r1, step s1")
    assert_same(SPECIAL.ratios, loaded)


# --- round trips through real Dagster runs -----------------------------------------------------------------


class Echo(BaseModel):
    payload: Everything
    note: str = "echo"
    echoed: bool = False


def echo_pipeline(value: Everything, seen: list[Everything]) -> Pipeline:
    """`payload` returns `value` (an asset); `echoed` receives it through the IO manager and records it."""

    @step
    def payload() -> Everything:
        return value

    @step
    def echoed(payload: Everything, note: str) -> bool:
        seen.append(payload)
        return note == "echo"

    return Pipeline("echo", context=Echo, steps=payload >> echoed, assets=["payload"])


@settings(HYPOTHESIS, max_examples=3, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=st.from_type(Everything))
@example(value=SPECIAL)
def test_values_survive_real_dagster_runs(value: Everything, instance: DagsterInstance) -> None:
    seen: list[Everything] = []
    result = run_pipeline(echo_pipeline(value, seen), instance=instance)
    assert result.success, result.error
    (received,) = seen
    assert_same(value, received)  # loaded by the IO manager and type-checked by Dagster as the next step's input
    assert isinstance(result.context, Echo) and result.context.echoed is True
    assert_same(value, result.context.payload)  # the final context, assembled from stored files
    root = PydanticJsonIOManager().root(instance.storage_directory())
    (run_file,) = (root / result.run_id).rglob("payload.json")
    asset_file = PydanticJsonIOManager.asset_path(root, ["echo", "payload"])
    for path in (run_file, asset_file):
        loaded = PydanticJsonIOManager.read(path, StoredKey("payload", Everything), where="test", root=root)
        assert_same(value, loaded)


# --- corrupt, hand-edited and stale files ------------------------------------------------------------------

CORRUPT = "is corrupt (not a flujo_dagster JSON envelope)"
REDO = "Re-execute the step that writes it."
LEAF_BODY = b'{"flujo":2,"key":"leaf","type":"Leaf","value":{"name":"a","weight":1.5,"when":"2024-01-02T00:00:00"}}'


def seal(body: bytes, secret: str | None = None, place: str = "leaf.json") -> bytes:
    """An envelope body (without its hash) with its content hash appended, as docs/concepts.md#storage says: the
    hash covers the file's place under the storage root (`place`), a newline, then the body."""
    data = place.encode() + b"\n" + body
    if secret is None:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
    else:
        digest = "hmac-sha256:" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()
    return body[:-1] + f',"hash":"{digest}"}}'.encode()


GOOD_LEAF = seal(LEAF_BODY)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json", f"{CORRUPT}: not JSON (expected ident at line 1 column 2)"),
        (b"", f"{CORRUPT}: not JSON (EOF while parsing a value at line 1 column 0)"),
        (GOOD_LEAF[:-5], f"{CORRUPT}: not JSON (EOF while parsing a string at line 1 column 177)"),
        (GOOD_LEAF[:-1] + b" }", f"{CORRUPT}: it does not end with a content hash"),
        (b"\xff\xfe", f"{CORRUPT}: not JSON (expected value at line 1 column 1)"),
        (b"[1, 2]", f"{CORRUPT}: it does not end with a content hash"),
        (
            LEAF_BODY.replace(b'"flujo":2', b'"flujo":1'),
            "is written in envelope version 1, and this flujo_dagster reads version 2 only (files of older versions "
            "are not converted)",
        ),
        (
            seal(LEAF_BODY.replace(b'"flujo":2', b'"flujo":3')),
            "is not in envelope version 2, the only one this flujo_dagster reads",
        ),
        (seal(LEAF_BODY.replace(b'"key":"leaf",', b"")), f"{CORRUPT}: key: missing"),
        (seal(LEAF_BODY.split(b',"value"')[0] + b"}"), f"{CORRUPT}: value: missing"),
        (
            GOOD_LEAF.replace(b'"name":"a"', b'"name":"b"'),
            "was changed after it was written (edited by hand, corrupted, written with another "
            "FLUJO_DAGSTER_STORAGE_SECRET), or moved or copied here from another place (another run's, step's or "
            "item's): its content and place do not match its sha256 hash",
        ),
    ],
    ids=[
        "garbage",
        "empty",
        "truncated",
        "hash-not-last",
        "not-utf8",
        "array",
        "old-version",
        "future-version",
        "no-key",
        "no-value",
        "edited",
    ],
)
def test_corrupt_file_raises_storage_error_naming_key_run_step_and_path(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = UPath(tmp_path) / "run-1" / "grow" / "leaf.json"
    PydanticJsonIOManager.write(path, GOOD_LEAF)
    assert PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="run run-1, step grow") == Leaf(
        name="a", weight=1.5, when=datetime(2024, 1, 2)
    )
    path.write_bytes(content)
    with pytest.raises(StorageError) as caught:
        PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="run run-1, step grow")
    assert str(caught.value) == f"stored value of key 'leaf' (run run-1, step grow) at {path} {reason}. {REDO}"
    assert caught.value.__cause__ is None  # pydantic's errors hold the file's bytes: never chained
    assert caught.value.__context__ is None or caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("old", "new", "errors"),
    [
        (b"1.5", b'"heavy"', "value.weight: float_parsing"),
        (b'"name":"a",', b"", "value.name: missing"),
        (b'"2024-01-02T00:00:00"', b'"yesterday"', "value.when: datetime_from_date_parsing"),
    ],
    ids=["wrong-type", "missing-field", "bad-datetime"],
)
def test_value_no_longer_matching_its_type_raises_storage_error_without_its_content(
    tmp_path: Path, old: bytes, new: bytes, errors: str
) -> None:
    """An intact envelope (its hash matches) whose value no longer fits the key's type, as when the context field
    changed since the file was written: the error names where and which error, never the stored value."""
    path = UPath(tmp_path) / "run-1" / "grow" / "leaf.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(seal(LEAF_BODY.replace(old, new)))
    with pytest.raises(StorageError) as caught:
        PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="run run-1, step grow")
    assert str(caught.value) == (
        f"stored value of key 'leaf' (run run-1, step grow) at {path} no longer matches its declared type Leaf: "
        f"{errors}. Change the context field back, or: {REDO}"
    )
    assert "heavy" not in str(caught.value) and "yesterday" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # never pydantic's error


def test_a_file_holding_another_key_is_refused(tmp_path: Path) -> None:
    path = UPath(tmp_path) / "run-1" / "grow" / "leaf.json"
    PydanticJsonIOManager.write(path, seal(LEAF_BODY.replace(b'"key":"leaf"', b'"key":"twig"')))
    with pytest.raises(StorageError) as caught:
        PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="run run-1, step grow")
    assert str(caught.value) == (
        f"stored file {path} (run run-1, step grow) holds key 'twig', not 'leaf': it was copied or moved by hand. "
        f"Put the right file back, or delete it. {REDO}"
    )


def test_missing_file_raises_storage_error(tmp_path: Path) -> None:
    path = UPath(tmp_path) / "run-1" / "grow" / "leaf.json"
    with pytest.raises(StorageError) as caught:
        PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="run run-1, step grow")
    assert str(caught.value) == (
        f"no stored value for key 'leaf' (run run-1, step grow) at {path}: the file is missing. {REDO}"
    )


class Shelf(BaseModel):
    name: str
    leaf: Leaf
    label: str | None = None


@step
def leaf(name: str) -> Leaf:
    return Leaf(name=name, weight=math.nan, when=datetime(2024, 1, 2, tzinfo=UTC))


@step
def label(leaf: Leaf) -> str:
    if leaf.name == "broken":
        raise ValueError("cannot label a broken leaf")
    return f"{leaf.name} ({leaf.weight})"


shelf = Pipeline("shelf", context=Shelf, steps=leaf >> label)


def shelf_job() -> JobDefinition:
    """Reconstructable target: `label` fails on a leaf named 'broken'."""
    return build_definitions(pipelines=[shelf]).resolve_job_def("shelf")


SHELF_CONFIG: dict[str, Any] = {"ops": {"flujo_inputs": {"config": {"inputs": {"name": "broken"}}}}}
OAK_CONFIG: dict[str, Any] = {"ops": {"flujo_inputs": {"config": {"inputs": {"name": "oak"}}}}}


def failure_of(events: Sequence[DagsterEvent], step_key: str) -> SerializableErrorInfo:
    """The error of the one step that failed."""
    (event,) = [e for e in events if e.event_type == DagsterEventType.STEP_FAILURE]
    assert event.step_key == step_key
    error = event.step_failure_data.error
    assert error is not None
    return error


def reexecute(
    parent_run_id: str, instance: DagsterInstance, steps: list[str] | None = None
) -> tuple[bool, str, list[DagsterEvent]]:
    """Re-execute from failure, or the given step selection (`['leaf*']`: `leaf` and what follows it)."""
    if steps is None:
        options = ReexecutionOptions.from_failure(parent_run_id, instance)
    else:
        options = ReexecutionOptions(parent_run_id=parent_run_id, step_selection=steps)
    with execute_job(reconstructable(shelf_job), instance, reexecution_options=options, raise_on_error=False) as res:
        return res.success, res.run_id, list(res.all_events)


def leaf_origin(run_id: str) -> tuple[str, str]:
    """How errors name the run-scoped file of key `leaf`, and the remedy they give: re-execute from step `leaf`."""
    where = f"run {run_id}, step leaf, step path 'shelf > step:leaf'"
    remedy = (
        f"Re-execute run {run_id} from step leaf, the step that writes it: in the Dagster UI select leaf in the run "
        "and re-execute From selected, or in Python ReexecutionOptions(parent_run_id=..., "
        "step_selection=['leaf*'])."
    )
    return where, remedy


def load_error(events: list[DagsterEvent]) -> str:
    """The StorageError that failed step `label` while loading its input."""
    error = failure_of(events, "label")
    assert error.cls_name == "DagsterExecutionLoadInputError"
    assert error.cause is not None and error.cause.cls_name == "StorageError"
    assert error.cause.cause is None  # nothing chained: pydantic's errors would show the file's bytes
    return error.cause.message.removeprefix("flujo_dagster.errors.StorageError: ").removesuffix("\n")


def test_reexecution_loading_a_corrupt_or_edited_file_fails_with_storage_error(instance: DagsterInstance) -> None:
    job = reconstructable(shelf_job)
    with execute_job(job, instance, run_config=SHELF_CONFIG, raise_on_error=False) as first:
        assert not first.success
        first_id = first.run_id
        cause = failure_of(first.all_events, "label").cause
        assert cause is not None and cause.message == "ValueError: cannot label a broken leaf\n"
    path = PydanticJsonIOManager().root(instance.storage_directory()) / first_id / "leaf" / "leaf.json"
    good = path.read_bytes()
    assert good == seal(
        b'{"flujo":2,"key":"leaf","type":"Leaf","value":{"name":"broken","weight":NaN,"when":"2024-01-02T00:00:00Z"}}',
        place=f"{first_id}/leaf/leaf.json",
    )
    where, remedy = leaf_origin(first_id)  # the run that produced the file, not the re-execution

    # corrupt: the re-execution fails while loading `label`'s input, naming run, step, key, file and remedy
    path.write_bytes(b"not json")
    ok, second_id, events = reexecute(first_id, instance)
    assert not ok
    assert load_error(events) == (
        f"stored value of key 'leaf' ({where}) at {path} {CORRUPT}: not JSON (expected ident at line 1 column 2). "
        f"{remedy}"
    )

    # hand-edited into a value of the right type: the content hash no longer matches, and nothing of it is shown
    path.write_bytes(good.replace(b'"broken"', b'"mended"').replace(b"NaN", b"Infinity"))
    ok, third_id, events = reexecute(second_id, instance)
    assert not ok
    assert load_error(events) == (
        f"stored value of key 'leaf' ({where}) at {path} was changed after it was written (edited by hand, "
        f"corrupted, written with another FLUJO_DAGSTER_STORAGE_SECRET), or moved or copied here from another place "
        f"(another run's, step's or item's): its content and place do not match its sha256 hash. {remedy}"
    )

    # a directory in its place: a StorageError too, not a raw IsADirectoryError
    path.unlink()
    path.mkdir()
    ok, _, events = reexecute(third_id, instance)
    assert not ok
    assert load_error(events) == (
        f"no stored value for key 'leaf' ({where}) at {path}: a directory is in the file's place. {remedy}"
    )


def test_a_missing_file_names_the_step_to_re_execute_from_and_that_re_execution_recovers(
    instance: DagsterInstance,
) -> None:
    """Re-executing the reader (what 'from failure' does) cannot bring back a lost file; re-executing from the step
    the message names (the writer) does."""
    with execute_job(reconstructable(shelf_job), instance, run_config=OAK_CONFIG) as first:
        assert first.success
        first_id = first.run_id
    root = PydanticJsonIOManager().root(instance.storage_directory())
    path = PydanticJsonIOManager.output_path(root, first_id, "leaf", "leaf")
    path.unlink()
    where, remedy = leaf_origin(first_id)
    ok, _, events = reexecute(first_id, instance, ["label*"])
    assert not ok
    assert load_error(events) == f"no stored value for key 'leaf' ({where}) at {path}: the file is missing. {remedy}"
    ok, fourth_id, events = reexecute(first_id, instance, ["leaf*"])
    assert ok
    assert {e.step_key for e in events if e.event_type == DagsterEventType.STEP_START} == {
        "leaf",
        "label",
        "flujo_context",
    }
    final = load_final_context(shelf, fourth_id, instance=instance)
    assert final.label == "oak (nan)"


# --- fan-in: each element loads with its producer's type ---------------------------------------------------

LOADED: dict[str, list[Any]] = {}
FAN_VALUES: dict[str, tuple[object, object]] = {
    "leaf": (Leaf, NAN_LEAF),
    "money": (Decimal, Decimal("1.50")),
    "when": (datetime, datetime(2024, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=5, minutes=45)))),
    "pet": (Pet, Cat(kind="cat", lives=9)),
    "color": (Color, Color.GREEN),
    "point": (Point, Point(x=math.inf, y=-1)),
    "ratio": (float, -math.inf),
}


def producer(key: str, annotation: object, value: object) -> OpDefinition:
    @op(name=f"make_{key}", out=Out(key_type("fan", key, annotation), io_manager_key="flujo_io_manager"))
    def make() -> object:
        return value

    return make


def plain_producer(name: str, python_type: type, value: object) -> OpDefinition:
    @op(name=name, out=Out(python_type, io_manager_key="flujo_io_manager"))
    def make() -> object:
        return value

    return make


def collector(name: str, dagster_type: type | DagsterType) -> OpDefinition:
    @op(name=name, ins={"items": In(dagster_type)})
    def collect(items: list[Any]) -> None:
        LOADED[name] = items

    return collect


def fan_in_job(producers: list[OpDefinition]) -> JobDefinition:
    consumers = [collector("collect_list", list), collector("collect_any", DagsterAny)]
    fan = MultiDependencyDefinition([DependencyDefinition(p.name) for p in producers])
    graph = GraphDefinition(
        name="fan",
        node_defs=[*producers, *consumers],
        dependencies={c.name: {"items": fan} for c in consumers},
    )
    return graph.to_job(resource_defs={"flujo_io_manager": PydanticJsonIOManager()})


def test_fan_in_loads_each_element_with_its_producers_type(instance: DagsterInstance) -> None:
    LOADED.clear()
    producers = [producer(key, annotation, value) for key, (annotation, value) in FAN_VALUES.items()]
    result = fan_in_job(producers).execute_in_process(instance=instance)
    assert result.success
    expected = [value for _, value in FAN_VALUES.values()]
    for name in ("collect_list", "collect_any"):
        assert_same(expected, LOADED[name], name)
    root = PydanticJsonIOManager().root(instance.storage_directory())
    stored = json.loads((root / result.run_id / "make_money" / "result.json").read_text())
    assert stored.pop("hash").startswith("sha256:")
    assert stored == {"flujo": 2, "key": "money", "type": "Decimal", "value": "1.50"}


def test_fan_in_keeps_plain_dagster_types_of_producers(instance: DagsterInstance) -> None:
    """Producers typed by plain Python types (not flujo keys) also keep their type in a fan-in."""
    LOADED.clear()
    moment = datetime(2024, 5, 6, 7, 8, tzinfo=UTC)
    producers = [
        plain_producer("count", int, 5),
        plain_producer("moment", datetime, moment),
        producer("leaf", Leaf, NAN_LEAF),
    ]
    result = fan_in_job(producers).execute_in_process(instance=instance)
    assert result.success
    for name in ("collect_list", "collect_any"):
        assert_same([5, moment, NAN_LEAF], LOADED[name], name)


# --- quiet: no event of its own per read or write ----------------------------------------------------------


def step_event_counts(records: Sequence[EventLogEntry]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for record in records:
        if record.step_key is not None and record.dagster_event is not None:
            counts.setdefault(record.step_key, Counter())[record.dagster_event.event_type_value] += 1
    return counts


def standard_step_events(inputs: int, outputs: int) -> Counter[str]:
    """What Dagster itself records for a step: one LOADED_INPUT per loaded input, one HANDLED_OUTPUT per output."""
    return Counter(
        {
            "STEP_START": 1,
            "STEP_INPUT": inputs,
            "LOADED_INPUT": inputs,
            "STEP_OUTPUT": outputs,
            "HANDLED_OUTPUT": outputs,
            "STEP_SUCCESS": 1,
        }
    )


def test_io_manager_writes_no_event_of_its_own(instance: DagsterInstance) -> None:
    run = run_pipeline(shelf, {"name": "oak"}, instance=instance)
    assert run.success, run.error
    records = instance.all_logs(run.run_id)
    assert [r.user_message for r in records if not r.is_dagster_event] == []  # no log lines at all
    assert step_event_counts(records) == {
        "flujo_inputs": standard_step_events(0, 1),
        "leaf": standard_step_events(1, 1),
        "label": standard_step_events(1, 1),
        "flujo_context": standard_step_events(0, 1),  # its one input, `after`, is Nothing: nothing to load
    }
    # where each value went rides on Dagster's own HANDLED_OUTPUT event
    handled = [r.dagster_event for r in records if r.dagster_event_type == DagsterEventType.HANDLED_OUTPUT]
    paths = [e.event_specific_data.metadata["flujo/path"].value for e in handled if e is not None]  # type: ignore[union-attr]
    assert len(paths) == 4 and all(Path(str(p)).is_file() for p in paths)


# --- no pickle anywhere ------------------------------------------------------------------------------------

PACKAGE = Path(flujo_dagster.__file__).parent
PICKLING_MODULES = {"pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve", "_pickle"}
PICKLING_IO_MANAGERS = {"fs_io_manager", "FilesystemIOManager", "PickledObjectFilesystemIOManager"}


def package_sources() -> Iterator[Path]:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20  # the whole package, not an empty glob
    return iter(sources)


def code_names(source: str) -> Iterator[str]:
    """Every identifier in the code (comments and strings, such as 'No pickle.' in a docstring, excluded)."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME:
            yield token.string


def imported_modules(source: str) -> Iterator[str]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_pickle_in_the_package_source() -> None:
    offenders: list[str] = []
    for path in package_sources():
        source = path.read_text()
        names = set(code_names(source))
        offenders += [f"{path}: {n}" for n in sorted(names) if "pickle" in n.lower() or n in PICKLING_IO_MANAGERS]
        roots = {m.split(".")[0] for m in imported_modules(source)}
        offenders += [f"{path}: import {m}" for m in sorted(roots & PICKLING_MODULES)]
    assert offenders == []


def test_no_output_falls_back_to_dagsters_pickling_io_manager(instance: DagsterInstance) -> None:
    """Every op output of a compiled job is stored by the flujo IO manager, and a run writes no pickle."""
    job = shelf_job()
    outputs = [(node.name, o.name, o.io_manager_key) for node in job.all_node_defs for o in node.output_defs]
    assert outputs and {key for _, _, key in outputs} == {"flujo_io_manager"}
    run = run_pipeline(shelf, {"name": "oak"}, instance=instance)
    assert run.success, run.error
    written = [p for p in Path(instance.storage_directory()).rglob("*") if p.is_file()]
    stored = [p for p in written if "flujo" in p.parts]
    assert len(stored) == 4  # one JSON envelope per output
    for path in written:
        assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"
    for path in stored:
        assert json.loads(path.read_bytes())["flujo"] == 2


# --- assets read by other jobs ------------------------------------------------------------------------------


class Words(BaseModel):
    text: str
    words: list[str] = Field(default_factory=list)


@step
def words(text: str) -> list[str]:
    return text.split()


@asset(ins={"words": AssetIn(key=["wp", "words"])}, io_manager_key="flujo_io_manager")
def word_count(words: list[str]) -> int:
    return len(words)


def test_a_downstream_asset_in_another_job_loads_the_latest_flujo_asset(instance: DagsterInstance) -> None:
    pipeline = Pipeline("wp", context=Words, steps=[words], assets=["words"])
    defs = Definitions.merge(
        build_definitions(pipelines=[pipeline]),
        Definitions(assets=[word_count], jobs=[define_asset_job("count", selection=[word_count])]),
    )
    first = defs.resolve_job_def("wp").execute_in_process(
        run_config={"ops": {"wp_graph": {"ops": {"flujo_inputs": {"config": {"inputs": {"text": "a b c"}}}}}}},
        instance=instance,
    )
    assert first.success
    counted = defs.resolve_job_def("count").execute_in_process(instance=instance)
    assert counted.success
    assert defs.load_asset_value(AssetKey(["word_count"]), instance=instance) == 3
