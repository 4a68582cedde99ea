"""An inline Parallel or Map that fails part-way keeps what its finished branches and items wrote: a
re-execution from failure reuses them, so no paid model request is made twice, and only when they ran on the
same inputs. Requests are counted by the model itself (`tests/checkpoint_defs.py`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import anyio
import pytest
from dagster import DagsterEventType, DagsterInstance, ReexecutionOptions, execute_job, reconstructable
from pydantic import BaseModel, Field, SecretStr
from upath import UPath

from flujo_dagster import Map, Parallel, Pipeline, PydanticJsonIOManager, load_final_context, names, step
from flujo_dagster.adapter.storage.checkpoints import _Manifest, checkpoint_path
from flujo_dagster.adapter.storage.files import write_file
from flujo_dagster.adapter.storage.io_manager import StoredKey, dump_envelope, read_envelope
from flujo_dagster.errors import ParallelBranchError, UsageLimitExceededError
from flujo_dagster.runtime.checkpoints import Checkpoint, Checkpointer
from flujo_dagster.runtime.interpreter import Interpreter
from flujo_dagster.runtime.records import StepRecord
from tests.checkpoint_defs import FAIL_MARKER, REQUEST_LOG, Pair, Topics, both, each, map_job, parallel_job


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The marker (present: requests about `bad` fail) and the request log of the counting model."""
    marker, log = tmp_path / "fail", tmp_path / "requests.log"
    marker.touch()
    log.touch()
    monkeypatch.setenv(FAIL_MARKER, str(marker))
    monkeypatch.setenv(REQUEST_LOG, str(log))
    return marker, log


def requests(log: Path) -> Counter[str]:
    return Counter(log.read_text().splitlines())


def inputs_config(**inputs: object) -> dict[str, Any]:
    return {"ops": {"flujo_inputs": {"config": {"inputs": inputs}}}}


def step_rows(instance: DagsterInstance, run_id: str, op: str) -> dict[str, dict[str, Any]]:
    """The inline op's per-step records (`flujo/steps_json`) in run `run_id`, by step path."""
    for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_OUTPUT):
        event = record.dagster_event
        if event is not None and event.step_key == op and event.step_output_data is not None:
            metadata = event.step_output_data.metadata
            if names.STEPS_JSON in metadata:
                return {row["path"]: row for row in metadata[names.STEPS_JSON].value}  # type: ignore[attr-defined, union-attr]
    raise AssertionError(f"op {op} wrote no step records in run {run_id}")


def messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [r.user_message for r in instance.all_logs(run_id)]


def fail_then_reexecute(instance: DagsterInstance, job: Any, config: dict[str, Any], marker: Path) -> tuple[str, str]:
    """Run (it fails on `bad`), remove the marker, re-execute from failure (it succeeds): the two run ids."""
    with execute_job(job, instance=instance, run_config=config) as first:
        assert not first.success
        parent = first.run_id
    marker.unlink()
    options = ReexecutionOptions.from_failure(parent, instance)
    with execute_job(job, instance=instance, reexecution_options=options) as second:
        assert second.success
        rerun = {e.step_key for e in second.all_events if e.event_type == DagsterEventType.STEP_START}
        child = second.run_id
    assert "flujo_inputs" not in rerun  # the op's inputs come from the parent's storage
    return parent, child


EACH = names.step_path("ckpt_map", "map", "each")


BOTH = names.step_path("ckpt_parallel", "parallel", "both")


def item(index: int) -> str:
    """The path of the Map's agent step for element `index`."""
    return names.step_path(names.item_path(EACH, index), "agent", "summarize")


def test_a_reexecuted_inline_map_reuses_every_item_that_finished(
    instance: DagsterInstance, model: tuple[Path, Path]
) -> None:
    marker, log = model
    topics = ["ants", "bees", "bad", "cats"]
    job = reconstructable(map_job)
    parent, child = fail_then_reexecute(instance, job, inputs_config(topics=topics), marker)
    first = Counter({f"about {t}": 1 for t in topics})
    assert requests(log) == first + Counter({"about bad": 1})  # exactly the failed item's request was added

    context = load_final_context(each, child, instance=instance)
    assert isinstance(context, Topics)
    assert context.notes == [f"notes on {t}" for t in topics]
    rows = step_rows(instance, child, "each")
    assert {path: (row["status"], row["requests"]) for path, row in rows.items()} == {
        item(0): ("reused", 0),
        item(1): ("reused", 0),
        item(2): ("ok", 1),
        item(3): ("reused", 0),
    }
    assert all(rows[item(i)]["cost_usd"] == 0 for i in (0, 1, 3))  # nothing spent on them in this run
    assert rows[item(2)]["cost_usd"] > 0
    assert any(f"reused what it wrote in run {parent}" in m for m in messages(instance, child))


def test_a_reexecuted_inline_parallel_reuses_the_branch_that_finished(
    instance: DagsterInstance, model: tuple[Path, Path]
) -> None:
    marker, log = model
    job = reconstructable(parallel_job)
    _, child = fail_then_reexecute(instance, job, inputs_config(subject="owls"), marker)
    assert requests(log) == Counter({"about owls": 1, "about bad owls": 2})

    context = load_final_context(both, child, instance=instance)
    assert isinstance(context, Pair)
    assert (context.left, context.right) == ("notes on owls", "notes on bad owls")
    rows = step_rows(instance, child, "both")
    assert {path: row["status"] for path, row in rows.items()} == {
        names.step_path(names.child_path(BOTH, "left"), "agent", "ask_left"): "reused",
        names.step_path(names.child_path(BOTH, "right"), "agent", "ask_right"): "ok",
    }


def test_a_checkpoint_made_on_other_inputs_is_never_reused(instance: DagsterInstance, model: tuple[Path, Path]) -> None:
    """A client may name any parent run: re-executing every step with other inputs finds the parent's
    checkpoint of item [0], made on `ants`, and must run item [0] again on `apes`."""
    marker, log = model
    job = reconstructable(map_job)
    with execute_job(job, instance=instance, run_config=inputs_config(topics=["ants", "bad"])) as first:
        assert not first.success
        parent = first.run_id
    marker.unlink()
    options = ReexecutionOptions(parent_run_id=parent, step_selection=["flujo_inputs*"])
    config = inputs_config(topics=["apes", "bad"])
    with execute_job(job, instance=instance, run_config=config, reexecution_options=options) as second:
        assert second.success
        child = second.run_id
    assert requests(log) == Counter({"about ants": 1, "about apes": 1, "about bad": 2})
    context = load_final_context(each, child, instance=instance)
    assert isinstance(context, Topics)
    assert context.notes == ["notes on apes", "notes on bad"]
    assert step_rows(instance, child, "each")[item(0)]["status"] == "ok"
    assert any(f"its checkpoint in run {parent} ran on other inputs" in m for m in messages(instance, child))


def test_an_unreadable_checkpoint_is_a_logged_miss_not_an_error(
    instance: DagsterInstance, model: tuple[Path, Path]
) -> None:
    """A hand-edited checkpoint file: the item runs again (one more request), the run succeeds, a warning names
    the file."""
    marker, log = model
    job = reconstructable(map_job)
    with execute_job(job, instance=instance, run_config=inputs_config(topics=["ants", "bad"])) as first:
        assert not first.success
        parent = first.run_id
    root = PydanticJsonIOManager().root(instance.storage_directory())
    manifest = checkpoint_path(root, parent, "each", names.item_path(EACH, 0), names.CHECKPOINT_MANIFEST)
    assert manifest.exists()
    UPath(manifest).write_text('{"flujo": 1, "key": "not this"')
    marker.unlink()
    with execute_job(
        job, instance=instance, reexecution_options=ReexecutionOptions.from_failure(parent, instance)
    ) as second:
        assert second.success
        child = second.run_id
    assert requests(log) == Counter({"about ants": 2, "about bad": 2})
    context = load_final_context(each, child, instance=instance)
    assert isinstance(context, Topics) and context.notes == ["notes on ants", "notes on bad"]
    assert any(f"its checkpoint in run {parent} ({manifest}) could not be read" in m for m in messages(instance, child))


# --- the runtime alone (no Dagster): nested fan-outs and our own errors, on an in-memory store ---------------------


class MemoryStore:
    """A `CheckpointStore` in a dict, keyed by step path and inputs digest."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str], Checkpoint] = {}

    def load(self, path: str, inputs: str, keys: Collection[str], required: Collection[str] = ()) -> Checkpoint | None:
        found = self.saved.get((path, inputs))
        fits = found is not None and set(required) <= set(found.values) <= set(keys)
        return found if fits else None

    def save(self, path: str, inputs: str, checkpoint: Checkpoint) -> None:
        self.saved[(path, inputs)] = checkpoint


class Records:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []

    def step_finished(self, record: StepRecord) -> None:
        self.records.append(record)

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None:
        pass


class Nested(BaseModel):
    xs: list[int]
    x: int = 0
    y: int = 0
    ys: list[int] = Field(default_factory=list)
    z: int = 0


CALLS: list[object] = []
FAILING: dict[int, Exception] = {}


@step(name="double", output_keys=["y"])
def double(x: int) -> int:
    CALLS.append(x)
    if x in FAILING:
        raise FAILING[x]
    return 2 * x


@step(name="other", output_keys=["z"])
def other() -> int:
    CALLS.append("z")
    return 7


nested = Pipeline(
    "nested",
    context=Nested,
    steps=[
        Parallel(
            "fan",
            branches={
                "maps": [Map("each", over="xs", item="x", body=[double], result="y", into="ys")],
                "other": [other],
            },
        )
    ],
)


def interpret(store: MemoryStore, state: dict[str, object]) -> Records:
    records = Records()
    interpreter = Interpreter(fields=nested.fields, agents=None, reporter=records, checkpoints=store)
    anyio.run(interpreter.run, nested.steps, state, nested.name)
    return records


def test_nested_fanouts_reuse_what_finished_at_every_level() -> None:
    """A Map in a Parallel's branch: the branch that finished is reused whole, and inside the branch that failed,
    the items that finished are reused; only the failed item runs again."""
    store, start = MemoryStore(), {"xs": [1, 2, 3], "x": 0, "y": 0, "ys": [], "z": 0}
    CALLS.clear()
    FAILING.clear()
    FAILING[3] = RuntimeError("item 3 fails once")
    with pytest.raises(ParallelBranchError):
        interpret(store, dict(start))
    assert Counter(CALLS) == Counter([1, 2, 3, "z"])

    FAILING.clear()
    state = dict(start)
    records = interpret(store, state)
    assert Counter(CALLS) == Counter([1, 2, 3, "z", 3])  # only the failed item ran again
    assert (state["ys"], state["z"]) == ([2, 4, 6], 7)
    fan = names.step_path("nested", "parallel", "fan")
    each = names.step_path(names.child_path(fan, "maps"), "map", "each")
    statuses = {r.path: r.status for r in records.records}
    assert statuses == {
        names.step_path(names.item_path(each, 0), "step", "double"): "reused",
        names.step_path(names.item_path(each, 1), "step", "double"): "reused",
        names.step_path(names.item_path(each, 2), "step", "double"): "ok",
        names.step_path(names.child_path(fan, "other"), "step", "other"): "reused",
    }


def test_items_that_finished_beside_a_budget_refusal_are_kept() -> None:
    """Our own errors (a budget refusal) fail the op after the other items finish: those are kept and reused."""
    store, start = MemoryStore(), {"xs": [1, 2, 3], "x": 0, "y": 0, "ys": [], "z": 0}
    CALLS.clear()
    FAILING.clear()
    FAILING[2] = UsageLimitExceededError("budget refused the request")
    with pytest.raises(UsageLimitExceededError):
        interpret(store, dict(start))
    FAILING.clear()
    state = dict(start)
    interpret(store, state)
    assert Counter(CALLS) == Counter([1, 2, 3, "z", 2])
    assert state["ys"] == [2, 4, 6]


def rerun_item_zero(instance: DagsterInstance, log: Path, marker: Path, parent: str) -> str:
    """Re-execute `parent` from failure: item [0] runs again (a second request about ants); the child's run id."""
    marker.unlink()
    options = ReexecutionOptions.from_failure(parent, instance)
    with execute_job(reconstructable(map_job), instance=instance, reexecution_options=options) as second:
        assert second.success
        child = second.run_id
    assert requests(log) == Counter({"about ants": 2, "about bees": 1, "about bad": 2})
    context = load_final_context(each, child, instance=instance)
    assert isinstance(context, Topics) and context.notes == ["notes on ants", "notes on bees", "notes on bad"]
    return child


def first_map_run(instance: DagsterInstance) -> tuple[str, UPath]:
    """A run of `map_job` on ants, bees, bad (it fails on bad): its id and the storage root."""
    config = inputs_config(topics=["ants", "bees", "bad"])
    with execute_job(reconstructable(map_job), instance=instance, run_config=config) as first:
        assert not first.success
        parent = first.run_id
    return parent, PydanticJsonIOManager().root(instance.storage_directory())


@pytest.mark.parametrize("secret", [None, "s3cret"], ids=["plain", "keyed"])
def test_a_value_file_swapped_between_items_is_a_miss(
    instance: DagsterInstance, model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    """Item [1]'s value file copied over item [0]'s (both intact files of the same key): never reused as [0]."""
    if secret is not None:
        monkeypatch.setenv("FLUJO_DAGSTER_STORAGE_SECRET", secret)
    marker, log = model
    parent, root = first_map_run(instance)
    zero, one = (checkpoint_path(root, parent, "each", names.item_path(EACH, i), "value-0") for i in (0, 1))
    zero.write_bytes(one.read_bytes())
    child = rerun_item_zero(instance, log, marker, parent)
    assert step_rows(instance, child, "each")[item(0)]["status"] == "ok"
    assert step_rows(instance, child, "each")[item(1)]["status"] == "reused"


def test_a_manifest_lacking_the_items_result_is_a_miss_not_a_crash(
    instance: DagsterInstance, model: tuple[Path, Path]
) -> None:
    """An intact manifest listing no keys: the item must provide `note`, so it runs again (no KeyError)."""
    marker, log = model
    parent, root = first_map_run(instance)
    path = names.item_path(EACH, 0)
    file = checkpoint_path(root, parent, "each", path, names.CHECKPOINT_MANIFEST)
    manifest = read_envelope(file, StoredKey(path, _Manifest), where="test", root=root)
    assert isinstance(manifest, _Manifest)
    emptied = manifest.model_copy(update={"keys": [], "files": []})
    write_file(file, dump_envelope(StoredKey(path, _Manifest), emptied, file, root), root=root)
    child = rerun_item_zero(instance, log, marker, parent)
    assert step_rows(instance, child, "each")[item(0)]["status"] == "ok"
    assert any("lacks keys ['note']" in m for m in messages(instance, child))


class Vault(BaseModel):
    token: SecretStr = SecretStr("")
    kept: int = 0
    hidden: int = Field(default=0, exclude=True)


def test_inputs_that_do_not_dump_back_equal_make_no_checkpoint() -> None:
    """A SecretStr dumps as '**********' and an excluded field not at all: two different states would share a
    digest, so no branch or item is checkpointed on them (None: never saved, never loaded)."""
    fields = {"token": SecretStr, "vault": Vault, "kept": int}
    checkpoints = Checkpointer(MemoryStore(), fields, None)
    assert checkpoints.inputs({"kept": 1, "vault": Vault(kept=1)}) is not None
    assert checkpoints.inputs({"kept": 1, "token": SecretStr("a")}) is None
    assert checkpoints.inputs({"vault": Vault(hidden=1)}) is None
    assert checkpoints.inputs({"vault": Vault(token=SecretStr("b"))}) is None
    plain = checkpoints.inputs({"kept": 1})
    assert plain is not None and checkpoints.with_item(plain, "token", SecretStr("a")) is None
