"""Stored files that cannot be escaped or confused (issue 12).

- names from keys (run ids, step keys, asset keys, partition keys) are encoded injectively and bounded: no key
  leaves the storage root, two keys never share a file, a 300-character key works, readable names stay readable;
- no symlink under the root is followed, on write or read, and a symlink's target is never shown;
- anything but a regular file in a file's place is a `StorageError`, and writes are atomic;
- the content hash catches hand edits; keyed with `FLUJO_DAGSTER_STORAGE_SECRET`, also edits that recompute it.

Partition keys and asset keys that reach the IO manager come from plain Dagster assets here: flujo's own
definitions refuse them (PART-004, V-NAME: tests/test_validation_dagster.py), but a key can still arrive at run
time (dynamic partitions, the Launchpad).
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
from pathlib import Path
from urllib.parse import unquote

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    StaticPartitionsDefinition,
    asset,
    execute_job,
    materialize,
    reconstructable,
)
from dagster_shared.serdes import serialize_value
from hypothesis import given
from hypothesis import strategies as st
from upath import UPath

from flujo_dagster import PydanticJsonIOManager, StorageError
from flujo_dagster.adapter.storage.files import MAX_NAME, encode_name, read_file, stored_path, write_file
from flujo_dagster.adapter.storage.io_manager import StoredKey, dump_envelope, read_envelope
from tests.test_io_manager import LEAF_BODY, SHELF_CONFIG, Leaf, failure_of, reexecute, seal, shelf_job

ESCAPING = ["../../../../../x", "/abs/x", "sub/../x", "x", ".", "..", "", "a" * 300, "x.json", "%2E%2E", "~", "é/é"]
SECRET_ENV = "FLUJO_DAGSTER_STORAGE_SECRET"

# --- names: injective, bounded, under the root ---------------------------------------------------------------


def decode(component: str) -> str | None:
    """The name a component stands for; None for a shortened (hashed) one."""
    return None if "~" in component else unquote(component, errors="surrogatepass")


@given(st.lists(st.text(st.characters(exclude_categories=()), max_size=400), min_size=2, max_size=6, unique=True))
def test_encoded_names_are_injective_bounded_and_single_components(names: list[str]) -> None:
    components = [encode_name(n) for n in names]
    assert len(set(components)) == len(names)  # never two names in one file
    for name, component in zip(names, components, strict=True):
        assert component not in ("", ".", "..") and "/" not in component and "\\" not in component
        assert not component.startswith(".") and not component.lower().endswith(".json")
        assert component.isascii() and len(component) <= MAX_NAME + 65  # + `~` and the SHA-256, far below 255
        assert decode(component) in (name, None)
        if decode(component) is None:
            assert component.endswith("~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest())


def test_safe_names_stay_readable_and_never_collide_with_encoded_ones() -> None:
    for name in [
        "2026-11-01",
        "digest_graph.draft",
        "refine[0]",
        "final_context",
        "5b1e0a2c-9f3e-4c1b-a1b2-0c1d2e3f4a5b",
    ]:
        assert encode_name(name) == name
    assert encode_name("sub/../x") == "sub%2F..%2Fx"
    assert encode_name("..") == "%2E."
    assert encode_name("x.json") == "x%2Ejson"  # a folder named so would sit beside the file of key `x`
    assert encode_name("%2E.") == "%252E."  # a name that looks encoded is encoded again
    assert encode_name("a" * 300) == "a" * 48 + "~" + hashlib.sha256(b"a" * 300).hexdigest()


def test_partition_and_asset_keys_never_leave_the_root_nor_share_a_file(tmp_path: Path) -> None:
    root = UPath(tmp_path) / "flujo"
    paths = [PydanticJsonIOManager.asset_path(root, ["p", "v"], key) for key in ESCAPING]
    paths += [PydanticJsonIOManager.asset_path(root, ["p", "v", key]) for key in ESCAPING]
    paths += [PydanticJsonIOManager.asset_path(root, ["..", "..", "climbed"])]
    paths += [PydanticJsonIOManager.output_path(root, "run", "step", "out", key) for key in ESCAPING]
    assert len({str(p) for p in paths}) == len(paths)
    for path in paths:
        relative = Path(path.path).relative_to(root.path)  # lexically under the root...
        assert ".." not in relative.parts and "." not in relative.parts  # ...and nothing climbs back out
        assert all(len(part.encode()) < 255 for part in relative.parts)


def test_x_and_sub_dot_dot_x_never_share_a_file(tmp_path: Path) -> None:
    """The IO manager itself: partition `sub/../x` is a file of its own, and `x` loads its own value."""
    root = UPath(tmp_path) / "flujo"
    stored = StoredKey("v", str)
    for key in ["x", "sub/../x"]:
        path = PydanticJsonIOManager.asset_path(root, ["p", "v"], key)
        PydanticJsonIOManager.write(path, dump_envelope(stored, f"value of {key}", path, root), root=root)
    for key in ["x", "sub/../x"]:
        path = PydanticJsonIOManager.asset_path(root, ["p", "v"], key)
        assert PydanticJsonIOManager.read(path, stored, where="test", root=root) == f"value of {key}"
    assert sorted(p.name for p in (root / "assets" / "p" / "v").iterdir()) == [
        "partition=sub%2F..%2Fx.json",
        "partition=x.json",
    ]


ASSET_KEYS = ["x", "sub/../x", "../../../../../x", "/abs/x", "a" * 300, ".", "x.json"]


@asset(partitions_def=StaticPartitionsDefinition(ASSET_KEYS), io_manager_key="flujo_io_manager")
def by_partition(context) -> str:  # type: ignore[no-untyped-def]  # Dagster refuses a string annotation
    return f"value of {context.partition_key}"


@asset(key=["..", "..", "climbed"], io_manager_key="flujo_io_manager")
def climbed() -> int:
    return 7


def test_keys_that_reach_the_io_manager_at_run_time_stay_under_the_root_in_their_own_files(
    instance: DagsterInstance, dagster_home: Path
) -> None:
    """Real runs of plain Dagster assets (what a dynamic key or the Launchpad can bring): every partition and the
    climbing asset key land in their own file under the storage root, and load back their own value."""
    resources = {"flujo_io_manager": PydanticJsonIOManager()}
    for key in ASSET_KEYS:
        assert materialize([by_partition], partition_key=key, instance=instance, resources=resources).success
    assert materialize([climbed], instance=instance, resources=resources).success
    root = Path(instance.storage_directory()) / "flujo"
    written = [p for p in dagster_home.parent.rglob("*.json") if p.is_file()]
    assert written and all(root in p.parents for p in written)  # nothing outside the root
    assert not (dagster_home / "x.json").exists() and not Path("/abs/x.json").exists()
    defs = Definitions(assets=[by_partition, climbed], resources=resources)
    for key in ASSET_KEYS:
        assert defs.load_asset_value(AssetKey("by_partition"), partition_key=key, instance=instance) == (
            f"value of {key}"
        )
    assert defs.load_asset_value(AssetKey(["..", "..", "climbed"]), instance=instance) == 7
    assert len(list((root / "assets" / "by_partition").iterdir())) == len(ASSET_KEYS)
    lost = root / "assets" / "by_partition" / "partition=sub%2F..%2Fx.json"
    lost.unlink()
    with pytest.raises(StorageError) as caught:
        defs.load_asset_value(AssetKey("by_partition"), partition_key="sub/../x", instance=instance)
    assert str(caught.value) == (
        f"no stored value for key 'result' (asset by_partition, partition 'sub/../x') at {lost}: the file is missing. "
        "Materialize asset by_partition (partition 'sub/../x') again to rewrite it."
    )
    assert defs.load_asset_value(AssetKey("by_partition"), partition_key="x", instance=instance) == "value of x"


# --- symlinks, directories, atomic writes ------------------------------------------------------------------------


def stored(tmp_path: Path) -> tuple[UPath, UPath]:
    root = UPath(tmp_path) / "flujo"
    return root, PydanticJsonIOManager.output_path(root, "run-1", "grow", "leaf")


def test_a_symlink_in_a_files_place_is_refused_on_write_and_its_target_kept(tmp_path: Path) -> None:
    root, path = stored(tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    path.parent.mkdir(parents=True)
    os.symlink(target, path.path)
    with pytest.raises(StorageError) as caught:
        PydanticJsonIOManager.write(path, GOOD, root=root, key="leaf", where="run run-1, step grow")
    assert str(caught.value) == (
        f"cannot store the value of key 'leaf' (run run-1, step grow) at {path}: a symlink is in the file's place "
        "(symlinks are never followed). Remove what is in the way (the storage never follows symlinks nor replaces "
        "directories), then: Re-execute the step that writes it."
    )
    assert target.read_text() == "keep me" and os.path.islink(path.path)


def test_a_symlinked_folder_under_the_root_is_refused_on_write_and_read(tmp_path: Path) -> None:
    root, path = stored(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "grow").mkdir(parents=True)
    (elsewhere / "grow" / "leaf.json").write_bytes(GOOD)
    root.mkdir()
    os.symlink(elsewhere, (root / "run-1").path)
    with pytest.raises(StorageError, match=r"folder 'run-1' on its path is a symlink \(symlinks are never followed\)"):
        PydanticJsonIOManager.write(path, GOOD, root=root)
    with pytest.raises(StorageError, match=r"folder 'run-1' on its path is a symlink"):
        PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="test", root=root)
    assert (elsewhere / "grow" / "leaf.json").read_bytes() == GOOD


def test_the_storage_root_itself_may_be_a_symlink(tmp_path: Path) -> None:
    """Only what lies under the root is checked: a DAGSTER_HOME reached through a symlink still works."""
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    root = UPath(tmp_path) / "link"
    path = PydanticJsonIOManager.output_path(root, "run-1", "grow", "leaf")
    PydanticJsonIOManager.write(path, GOOD, root=root)
    assert PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="test", root=root).name == "a"  # type: ignore[attr-defined]


def test_a_symlinked_file_is_never_read_and_its_target_never_shown(instance: DagsterInstance) -> None:
    """A run-scoped file replaced by a symlink to a secret: the re-execution fails with a StorageError, and no event
    of the run holds a byte of the secret."""
    with execute_job(reconstructable(shelf_job), instance, run_config=SHELF_CONFIG, raise_on_error=False) as first:
        assert not first.success
        first_id = first.run_id
    root = PydanticJsonIOManager().root(instance.storage_directory())
    path = PydanticJsonIOManager.output_path(root, first_id, "leaf", "leaf")
    secret = Path(instance.root_directory).parent / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- TOPSECRET")
    path.unlink()
    os.symlink(secret, path.path)
    ok, run_id, events = reexecute(first_id, instance)
    assert not ok
    error = failure_of(events, "label")
    assert error.cause is not None and error.cause.cls_name == "StorageError"
    assert "a symlink is in the file's place (symlinks are never followed)" in error.cause.message
    logged = serialize_value(list(instance.all_logs(run_id)))
    assert "TOPSECRET" not in logged and "OPENSSH" not in logged


def test_a_file_that_does_not_parse_is_reported_without_its_content(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(shelf_job), instance, run_config=SHELF_CONFIG, raise_on_error=False) as first:
        first_id = first.run_id
    root = PydanticJsonIOManager().root(instance.storage_directory())
    path = PydanticJsonIOManager.output_path(root, first_id, "leaf", "leaf")
    path.write_bytes(b'{"flujo":2,"key":"leaf","value":"TOPSECRET-1"')
    _, second_id, _ = reexecute(first_id, instance)
    body = b'{"flujo":2,"key":"leaf","type":"Leaf","value":{"name":"TOPSECRET-2"}}'
    path.write_bytes(seal(body, place=f"{first_id}/leaf/leaf.json"))
    _, third_id, events = reexecute(second_id, instance)
    error = failure_of(events, "label")
    assert error.cause is not None and "value.weight: missing; value.when: missing" in error.cause.message
    for run_id in (second_id, third_id):
        assert "TOPSECRET" not in serialize_value(list(instance.all_logs(run_id)))


def test_a_directory_or_a_file_in_the_wrong_place_is_a_storage_error(tmp_path: Path) -> None:
    root, path = stored(tmp_path)
    Path(path.path).mkdir(parents=True)
    with pytest.raises(StorageError, match="a directory is in the file's place"):
        PydanticJsonIOManager.write(path, GOOD, root=root)
    with pytest.raises(StorageError, match="a directory is in the file's place"):
        PydanticJsonIOManager.read(path, StoredKey("leaf", Leaf), where="test", root=root)
    other = PydanticJsonIOManager.output_path(root, "run-2", "grow", "leaf")
    Path(other.parent.path).parent.mkdir(parents=True)
    Path(other.parent.path).write_text("")  # a file where the step's folder goes
    with pytest.raises(StorageError, match="a file is in the place of one of its folders"):
        PydanticJsonIOManager.write(other, GOOD, root=root)
    fifo = PydanticJsonIOManager.output_path(root, "run-3", "grow", "leaf")
    Path(fifo.parent.path).mkdir(parents=True)
    os.mkfifo(fifo.path)  # would block a plain open() for ever
    with pytest.raises(StorageError, match="something other than a regular file is in the file's place"):
        PydanticJsonIOManager.read(fifo, StoredKey("leaf", Leaf), where="test", root=root)


def test_a_name_too_long_for_the_file_system_is_a_storage_error(tmp_path: Path) -> None:
    """The IO manager's own names are bounded (`encode_name`); a path built by hand is not, and still gets a
    StorageError rather than `OSError: File name too long`."""
    root = UPath(tmp_path) / "flujo"
    path = root / "run-1" / ("a" * 300 + ".json")
    with pytest.raises(StorageError, match="the path is too long for the file system"):
        write_file(path, GOOD, root=root)
    with pytest.raises(StorageError, match="the path is too long for the file system"):
        read_file(path, root=root, key="leaf", where="test")


def test_a_path_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = UPath(tmp_path) / "flujo"
    for path in [UPath(tmp_path) / "elsewhere.json", root / ".." / "x.json", root / "a" / ".." / ".." / "x.json"]:
        with pytest.raises(StorageError, match="it is not a file under the storage root"):
            write_file(path, GOOD, root=root)
        with pytest.raises(StorageError, match="it is not a file under the storage root"):
            read_file(path, root=root, key="leaf", where="test")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "elsewhere.json").exists()


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path: Path) -> None:
    """A new value replaces the file by a rename: a reader that opened the old file reads all of it, never a mix;
    the folder holds only the file afterwards, also after a failed write."""
    root, path = stored(tmp_path)
    PydanticJsonIOManager.write(path, GOOD, root=root)
    with open(path.path, "rb") as old:
        before = os.fstat(old.fileno()).st_ino
        PydanticJsonIOManager.write(path, GOOD.replace(b'"a"', b'"b"'), root=root)
        assert old.read() == GOOD
    assert os.stat(path.path).st_ino != before
    assert [p.name for p in Path(path.parent.path).iterdir()] == ["leaf.json"]
    Path(path.path).unlink()
    Path(path.path).mkdir()
    with pytest.raises(StorageError, match="a directory is in the file's place"):
        PydanticJsonIOManager.write(path, GOOD, root=root)
    assert [p.name for p in Path(path.parent.path).iterdir()] == ["leaf.json"]


def test_remote_paths_keep_working_and_stay_under_their_root() -> None:
    root = UPath("memory://flujo-safety/root")
    path = stored_path(root, "run-1", "../../escape", "leaf")
    assert str(path) == "memory://flujo-safety/root/run-1/%2E.%2F..%2Fescape/leaf.json"
    write_file(path, seal(LEAF_BODY, place="run-1/%2E.%2F..%2Fescape/leaf.json"), root=root)
    assert read_envelope(path, StoredKey("leaf", Leaf), where="test", root=root) == Leaf(
        name="a", weight=1.5, when="2024-01-02T00:00:00"
    )
    with pytest.raises(StorageError, match="it is not a file under the storage root"):
        write_file(UPath("memory://flujo-safety/other.json"), GOOD, root=root)
    with pytest.raises(StorageError, match="the file is missing"):
        read_file(stored_path(root, "nothing"), root=root, key="leaf", where="test")


# --- the content hash --------------------------------------------------------------------------------------------

GOOD = seal(LEAF_BODY, place="run-1/grow/leaf.json")  # at `stored(...)`'s path


def test_an_edit_that_recomputes_a_plain_hash_passes_and_a_keyed_hash_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain SHA-256 catches accidental edits and corruption, not someone who recomputes it; with a secret, only
    who knows it can write a file that loads."""
    root, path = stored(tmp_path)
    leaf = StoredKey("leaf", Leaf)
    forged = seal(LEAF_BODY.replace(b'"a"', b'"forged"'), place="run-1/grow/leaf.json")
    PydanticJsonIOManager.write(path, forged, root=root)
    assert PydanticJsonIOManager.read(path, leaf, where="test", root=root).name == "forged"  # type: ignore[attr-defined]

    monkeypatch.setenv(SECRET_ENV, "s3cret")
    with pytest.raises(StorageError) as caught:
        PydanticJsonIOManager.read(path, leaf, where="test", root=root)
    assert str(caught.value) == (
        f"stored value of key 'leaf' (test) at {path} carries a plain sha256 hash, but FLUJO_DAGSTER_STORAGE_SECRET is "
        "set: the file was written without the secret (before it was set, or by someone who does not know it). "
        "Re-execute the step that writes it."
    )
    written = dump_envelope(leaf, Leaf(name="kept", weight=1, when="2024-01-02T00:00:00"), path, root)
    assert re.search(rb',"hash":"hmac-sha256:[0-9a-f]{64}"\}$', written)
    assert written == seal(written[: written.index(b',"hash"')] + b"}", "s3cret", "run-1/grow/leaf.json")
    PydanticJsonIOManager.write(path, written, root=root)
    assert PydanticJsonIOManager.read(path, leaf, where="test", root=root).name == "kept"  # type: ignore[attr-defined]
    PydanticJsonIOManager.write(path, seal(LEAF_BODY, "guess", "run-1/grow/leaf.json"), root=root)
    with pytest.raises(StorageError, match="its content and place do not match its hmac-sha256 hash"):
        PydanticJsonIOManager.read(path, leaf, where="test", root=root)

    PydanticJsonIOManager.write(path, written, root=root)
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(StorageError, match="carries a keyed hash \\(hmac-sha256\\), and FLUJO_DAGSTER_STORAGE_SECRET"):
        PydanticJsonIOManager.read(path, leaf, where="test", root=root)


def test_a_hand_edited_file_fails_the_run_that_loads_it(instance: DagsterInstance) -> None:
    """docs/concepts.md says a hand-edited file raises `StorageError`: also an edit that keeps the type valid."""
    with execute_job(reconstructable(shelf_job), instance, run_config=SHELF_CONFIG, raise_on_error=False) as first:
        first_id = first.run_id
    root = PydanticJsonIOManager().root(instance.storage_directory())
    path = PydanticJsonIOManager.output_path(root, first_id, "leaf", "leaf")
    path.write_bytes(path.read_bytes().replace(b'"broken"', b'"mended"'))
    ok, _, events = reexecute(first_id, instance)
    assert not ok
    assert [e.step_key for e in events if e.event_type == DagsterEventType.STEP_SUCCESS] == []
    error = failure_of(events, "label")
    assert error.cause is not None and "was changed after it was written" in error.cause.message


@pytest.mark.parametrize("secret", [None, "s3cret"], ids=["plain", "keyed"])
def test_a_file_copied_into_another_runs_place_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str | None
) -> None:
    """The hash binds a file to its place under the root: run A's intact file copied into run B's place (same
    key, same step) fails B's read, naming the path."""
    if secret is not None:
        monkeypatch.setenv(SECRET_ENV, secret)
    root, leaf = UPath(tmp_path) / "flujo", StoredKey("leaf", Leaf)
    mine, theirs = (PydanticJsonIOManager.output_path(root, run, "grow", "leaf") for run in ("run-a", "run-b"))
    value = Leaf(name="a", weight=1.5, when="2024-01-02T00:00:00")
    PydanticJsonIOManager.write(mine, PydanticJsonIOManager.dump(leaf, value, mine, root), root=root)
    assert PydanticJsonIOManager.read(mine, leaf, where="test", root=root) == value
    PydanticJsonIOManager.write(theirs, mine.read_bytes(), root=root)
    with pytest.raises(StorageError, match="moved or copied here from another place") as caught:
        PydanticJsonIOManager.read(theirs, leaf, where="run run-b, step grow", root=root)
    assert str(theirs) in str(caught.value)


def test_a_write_that_fails_part_way_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A real failed `write` (the file-size limit, as a full disk would): a StorageError, and the folder holds no
    temporary file nor the file."""
    root, path = stored(tmp_path)
    path.parent.mkdir(parents=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(StorageError, match="cannot store"):
            write_file(path, b"x" * 100_000, root=root)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(Path(path.parent.path).iterdir()) == []
