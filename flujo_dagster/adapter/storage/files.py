"""Stored files that cannot be escaped or confused: names encoded injectively and bounded, paths kept under the
storage root, no symlink followed, atomic writes, and every file-system error a `StorageError` that says where
and what to do. The IO manager and the checkpoints store their files through `stored_path`, `write_file` and
`read_file`.

Layout of a name (one path component, docs/concepts.md#storage): a name of ASCII letters, digits and `_ - . [ ]`,
not starting with `.`, not ending with `.json`, at most `MAX_NAME` characters, is kept as it is (most names: run
ids, step keys, output names, dates). Any other name is percent-encoded (UTF-8 bytes of every other character, a
leading `.` and the `.` of a trailing `.json` as `%XX`), so it holds a `%` that no kept name holds; an encoded name
longer than `MAX_NAME` (or an empty name) becomes its first characters, `~` and the SHA-256 of the name. Decoding
the `%XX` escapes gives the name back, so two names never share a component (short of a SHA-256 collision).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote

from upath import UPath

from flujo_dagster.errors import StorageError

__all__ = [
    "FILE_SUFFIX",
    "MAX_NAME",
    "PARTITION_MARK",
    "Origin",
    "encode_name",
    "origin_remedy",
    "read_file",
    "stored_path",
    "write_file",
]

MAX_NAME = 100
"""The longest name component kept or percent-encoded as it is; longer ones are shortened with their hash."""
FILE_SUFFIX = ".json"
_HASH_MARK = "~"
_KEPT = re.compile(r"[A-Za-z0-9_.\-\[\]]+")
_KEPT_CHARS = "_-[]"  # besides letters and digits; `.` is kept except where it would make a name special
_PREFIX = 48  # characters of the encoded name kept before the hash of a long name
_LOCAL = frozenset({"", "file", "local"})
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_CHUNK = 1 << 20
_SYMLINK = "a symlink is in the file's place (symlinks are never followed)"
PARTITION_MARK = "partition="
"""Before a partition key's encoded name: `partition=2026-11-01.json` (no encoded name holds a `=`)."""


def _kept(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME
        and _KEPT.fullmatch(name) is not None
        and not name.startswith(".")
        and not name.lower().endswith(FILE_SUFFIX)
    )


def encode_name(name: str) -> str:
    """The path component for `name`: `name` itself when it is safe and readable, else its percent-encoding, else
    (too long, or empty) a shortened form with its SHA-256. Injective; never empty, `.`, `..`, nor holding `/`."""
    if _kept(name):
        return name
    encoded = quote(name, safe=_KEPT_CHARS + ".", encoding="utf-8", errors="surrogatepass").replace("~", "%7E")
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded.lower().endswith(FILE_SUFFIX):
        encoded = encoded[: -len(FILE_SUFFIX)] + "%2E" + encoded[-len(FILE_SUFFIX) + 1 :]
    if 0 < len(encoded) <= MAX_NAME:
        return encoded
    prefix = encoded[:_PREFIX]
    cut = prefix.rfind("%", len(prefix) - 2)  # never end inside a %XX escape
    prefix = prefix[:cut] if cut != -1 else prefix
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}{_HASH_MARK}{digest}"


def stored_path(root: UPath, *names: str) -> UPath:
    """The file for `names` under `root`: each name encoded (`encode_name`), the last one with `.json`. The path
    is under `root` whatever the names hold."""
    if not names:
        raise ValueError("stored_path needs at least one name")
    *folders, leaf = names
    return root.joinpath(*map(encode_name, folders), encode_name(leaf) + FILE_SUFFIX)


# --- where a file comes from, for error messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Who writes a stored file: the run and Dagster step key (and flujo step path) of the step that writes it, or
    the asset (and partition) whose latest copy it is. Error messages name it and say how to write it again."""

    run_id: str | None = None
    step_key: str | None = None
    step_path: str | None = None
    asset: str | None = None
    partition: str | None = None

    def __str__(self) -> str:
        if self.asset is not None:
            partition = f", partition {self.partition!r}" if self.partition is not None else ""
            return f"asset {self.asset}{partition}"
        parts = [f"run {self.run_id}"] if self.run_id else []
        if self.step_key:
            parts.append(f"step {self.step_key}")
        if self.step_path and self.step_path != self.step_key:
            parts.append(f"step path {self.step_path!r}")
        return ", ".join(parts) or "no known run"

    def remedy(self) -> str:
        """How to write the file again: re-execute the step that writes it (or materialize the asset again)."""
        if self.asset is not None:
            partition = f" (partition {self.partition!r})" if self.partition is not None else ""
            return f"Materialize asset {self.asset}{partition} again to rewrite it."
        if not self.step_key:
            return "Re-execute the step that writes it."
        return (
            f"Re-execute run {self.run_id} from step {self.step_key}, the step that writes it: in the Dagster UI "
            f"select {self.step_key} in the run and re-execute From selected, or in Python "
            f"ReexecutionOptions(parent_run_id=..., step_selection=['{self.step_key}*'])."
        )


def _origin(where: str | Origin) -> Origin | None:
    return where if isinstance(where, Origin) else None


def origin_remedy(where: str | Origin) -> str:
    """How to write a stored file again: `Origin.remedy`, or, when only words name where it came from, generic."""
    origin = _origin(where)
    return origin.remedy() if origin is not None else "Re-execute the step that writes it."


# --- safe reads and writes -------------------------------------------------------------------------------------------


class _Refused(Exception):
    """A file-system object that is there but may not be used: a symlink, a directory, not a regular file."""


def _problem(exc: BaseException) -> str:
    """What went wrong, in words (never a file's content)."""
    if isinstance(exc, _Refused):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        return "the file is missing"
    if isinstance(exc, IsADirectoryError):
        return "a directory is in the file's place"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "a symlink is in its path (symlinks are never followed)"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return "the path is too long for the file system"
    if isinstance(exc, NotADirectoryError):
        return "a file is in the place of one of its folders"
    if isinstance(exc, OSError):
        return f"the file cannot be used ({exc.strerror or type(exc).__name__})"
    return str(exc)  # a ValueError of `_parts` or `_check_remote`


def _parts(root: UPath, path: UPath) -> tuple[str, list[str]] | None:
    """For a local path: the root's local path and the components of `path` under it; None for a remote path.
    Raises `ValueError` when `path` is not strictly under `root` or holds `.`/`..` components."""
    if path.protocol not in _LOCAL or root.protocol not in _LOCAL:
        return None
    base, full = PurePosixPath(root.path), PurePosixPath(path.path)
    if not full.is_relative_to(base):
        raise ValueError(f"it is not a file under the storage root {root}")
    relative = full.relative_to(base).parts
    if not relative or any(p in (".", "..", "") for p in relative):
        raise ValueError(f"it is not a file under the storage root {root} (it holds '.' or '..')")
    return str(base), list(relative)


def _check_remote(root: UPath, path: UPath) -> None:
    """A remote path is still under its root, lexically: the same protocol, and the root's components first."""
    if path.protocol != root.protocol or not str(path).startswith(str(root).rstrip("/") + "/"):
        raise ValueError(f"it is not a file under the storage root {root}")
    if any(p in (".", "..") for p in PurePosixPath(path.path).parts):
        raise ValueError(f"it is not a file under the storage root {root} (it holds '.' or '..')")


def _open_folders(base: str, folders: Sequence[str], *, create: bool) -> int:
    """A file descriptor of the folder `base/folders...`, each folder under `base` opened without following a
    symlink (created first when `create`). `base` itself, the storage root, may be a symlink."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            if create:
                try:
                    os.mkdir(folder, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                inner = os.open(folder, _DIRECTORY, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(folder, fd):
                    raise _Refused(f"folder {folder!r} on its path is a symlink (symlinks are never followed)") from exc
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str | None:
    """Why a file of `mode` may not be read or replaced: None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return _SYMLINK
    if stat.S_ISDIR(mode):
        return "a directory is in the file's place"
    return "something other than a regular file is in the file's place"


def _read_local(base: str, parts: list[str], limit: int | None = None) -> bytes:
    folder = _open_folders(base, parts[:-1], create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Refused(_SYMLINK) from exc
            raise
        try:
            kind = _kind(os.fstat(fd).st_mode)
            if kind is not None:
                raise _Refused(kind)
            chunks, size = [], 0
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if limit is not None and size > limit:
                    raise _Refused(f"the file is larger than {limit} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        os.close(folder)


def _write_local(base: str, parts: list[str], data: bytes) -> None:
    os.makedirs(base, exist_ok=True)
    folder = _open_folders(base, parts[:-1], create=True)
    leaf, temporary = parts[-1], f".{parts[-1]}.{secrets.token_hex(8)}.tmp"
    try:
        try:
            kind = _kind(os.stat(leaf, dir_fd=folder, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            kind = None
        if kind is not None:
            raise _Refused(kind)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temporary, leaf, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:  # a full disk, an interrupt: no temporary file is left behind
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)


def read_file(
    path: UPath, *, root: UPath | None = None, key: str, where: str | Origin, limit: int | None = None
) -> bytes:
    """The bytes of the stored file at `path`, under `root` (default: the file's folder). No symlink under `root`
    is followed; anything but a regular file (or, locally, a file above `limit` bytes) is refused. Every failure
    is a `StorageError` naming `key`, `where` (run and step, or asset), the path, and the step to re-execute."""
    try:
        local = _parts(root if root is not None else path.parent, path)
        if local is None:
            _check_remote(root if root is not None else path.parent, path)
            return path.read_bytes()
        return _read_local(*local, limit)
    except (OSError, ValueError, _Refused) as exc:
        raise StorageError(
            f"no stored value for key {key!r} ({where}) at {path}: {_problem(exc)}. {origin_remedy(where)}"
        ) from None


def write_file(path: UPath, data: bytes, *, root: UPath | None = None, key: str = "", where: str | Origin = "") -> None:
    """Write `data` to `path` atomically (a temporary file in the same folder, then a rename), creating folders,
    under `root` (default: the file's folder). No symlink under `root` is followed, and a symlink or directory in
    the file's place is refused. Every failure is a `StorageError` naming `key`, `where`, and the path."""
    try:
        local = _parts(root if root is not None else path.parent, path)
        if local is None:
            _check_remote(root if root is not None else path.parent, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)  # an object store's put is atomic
            return
        _write_local(*local, data)
    except (OSError, ValueError, _Refused) as exc:
        what = f"the value of key {key!r} ({where}) at {path}" if key else str(path)
        raise StorageError(
            f"cannot store {what}: {_problem(exc)}. Remove what is in the way (the storage never follows symlinks "
            f"nor replaces directories), then: {origin_remedy(where)}"
        ) from None
