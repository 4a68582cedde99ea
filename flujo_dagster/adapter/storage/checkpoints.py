"""`OpCheckpoints`: the checkpoints of an inline op's Parallel branches and Map items, stored beside the op's
outputs as JSON envelopes, and found again in the runs a re-execution descends from."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping

from dagster import DagsterRun, OpExecutionContext
from pydantic import BaseModel
from upath import UPath

from flujo_dagster import names
from flujo_dagster.adapter.storage.io_manager import (
    PydanticJsonIOManager,
    StoredKey,
    dump_envelope,
    read_envelope,
    write_file,
)
from flujo_dagster.errors import StorageError
from flujo_dagster.names import IO_MANAGER_KEY
from flujo_dagster.runtime.checkpoints import Checkpoint
from flujo_dagster.runtime.records import StepRecord

__all__ = ["OpCheckpoints", "checkpoint_path"]


class _Manifest(BaseModel):
    """A checkpoint's own file (its envelope's key is the step path): the inputs digest, the keys written (in
    the order of the value files), each value file's SHA-256 and the step records. Written after the values, so
    it marks them complete."""

    inputs: str
    keys: list[str]
    files: list[str]
    records: list[StepRecord]


def checkpoint_path(root: UPath, run_id: str, step_key: str, step_path: str, file: str) -> UPath:
    """Where one file (`manifest`, `value-<n>`) of the checkpoint of the branch or item at `step_path`, in op
    `step_key` of run `run_id`, lives: beside the op's outputs (the IO manager's `output_path`), in folder
    `flujo.checkpoints`, named by the SHA-256 of the step path. The only place checkpoint paths are built."""
    digest = hashlib.sha256(step_path.encode()).hexdigest()
    return PydanticJsonIOManager.output_path(root, run_id, step_key, names.CHECKPOINTS_DIR, f"{digest}-{file}")


def _value_file(index: int) -> str:
    return f"value-{index}"


def _location(run: DagsterRun) -> str | None:
    """The code location a run's job came from; None for a run executed in process."""
    origin = run.remote_job_origin
    return origin.location_name if origin is not None else None


class OpCheckpoints:
    """The `CheckpointStore` of one inline op in one run: records in this run, looks up in the runs it
    re-executes (parent first, the same job only). Every miss that is not a plain absence is logged."""

    def __init__(self, context: OpExecutionContext, fields: Mapping[str, object]) -> None:
        io: PydanticJsonIOManager = getattr(context.resources, IO_MANAGER_KEY)
        self.context = context
        self.fields = fields
        self.root = io.root(context.instance.storage_directory())
        self.step_key = context.get_step_execution_context().step.key
        self._ancestors: list[str] | None = None

    def ancestors(self) -> list[str]:
        """The ids of the runs this run re-executes, parent first; a parent of another job (another name, or
        another code location) ends the chain."""
        if self._ancestors is None:
            run: DagsterRun = self.context.run
            job, location = run.job_name, _location(run)
            ids: list[str] = []
            while run.parent_run_id is not None and run.parent_run_id not in ids:
                parent = self.context.instance.get_run_by_id(run.parent_run_id)
                if parent is None or parent.job_name != job or _location(parent) != location:
                    break
                ids.append(parent.run_id)
                run = parent
            self._ancestors = ids
        return self._ancestors

    def load(self, path: str, inputs: str, keys: Collection[str], required: Collection[str] = ()) -> Checkpoint | None:
        """The nearest ancestor run's checkpoint of `path` made on `inputs`; None when there is none."""
        for run_id in self.ancestors():
            found = self._load_from(run_id, path, inputs, keys, required)
            if found is not None:
                self.context.log.info(
                    f"{path}: reused what it wrote in run {run_id} (same inputs); it was not run again"
                )
                return found
        return None

    def _load_from(
        self, run_id: str, path: str, inputs: str, keys: Collection[str], required: Collection[str]
    ) -> Checkpoint | None:
        where = f"run {run_id}, step {self.step_key}, checkpoint of {path}"
        file = checkpoint_path(self.root, run_id, self.step_key, path, names.CHECKPOINT_MANIFEST)
        try:
            if not file.exists():
                return None
            manifest = read_envelope(file, StoredKey(path, _Manifest), where=where, root=self.root)
            assert isinstance(manifest, _Manifest)
            if manifest.inputs != inputs:
                self.context.log.info(f"{path}: its checkpoint in run {run_id} ran on other inputs; not reused")
                return None
            unknown = [k for k in manifest.keys if k not in keys or k not in self.fields]
            if unknown:
                self.context.log.warning(
                    f"{path}: its checkpoint in run {run_id} ({file}) holds keys {unknown} that it no longer "
                    "writes; not reused"
                )
                return None
            missing = sorted(set(required) - set(manifest.keys))
            if missing or len(manifest.files) != len(manifest.keys):
                self.context.log.warning(
                    f"{path}: its checkpoint in run {run_id} ({file}) lacks keys {missing} (or value files) that it "
                    "must write; not reused"
                )
                return None
            values = {
                key: read_envelope(
                    checkpoint_path(self.root, run_id, self.step_key, path, _value_file(index)),
                    StoredKey(key, self.fields[key]),
                    where=where,
                    root=self.root,
                    sha256=sha256,
                )
                for index, (key, sha256) in enumerate(zip(manifest.keys, manifest.files, strict=True))
            }
        except (StorageError, OSError) as exc:  # unreadable, corrupt, of another type: a miss, never an error
            self.context.log.warning(
                f"{path}: its checkpoint in run {run_id} ({file}) could not be read ({type(exc).__name__}); "
                "not reused: it runs again"
            )
            return None
        return Checkpoint(values, tuple(manifest.records))

    def save(self, path: str, inputs: str, checkpoint: Checkpoint) -> None:
        """Write the values, then the manifest. A failed write is logged: a re-execution then runs it again."""
        keys, files = list(checkpoint.values), []
        try:
            for index, key in enumerate(keys):
                file = checkpoint_path(self.root, self.context.run_id, self.step_key, path, _value_file(index))
                data = dump_envelope(StoredKey(key, self.fields[key]), checkpoint.values[key], file, self.root)
                write_file(file, data, root=self.root)
                files.append(hashlib.sha256(data).hexdigest())
            manifest = _Manifest(inputs=inputs, keys=keys, files=files, records=list(checkpoint.records))
            file = checkpoint_path(self.root, self.context.run_id, self.step_key, path, names.CHECKPOINT_MANIFEST)
            write_file(file, dump_envelope(StoredKey(path, _Manifest), manifest, file, self.root), root=self.root)
        except (OSError, ValueError, StorageError) as exc:  # a full disk, a value that does not dump, a refused path
            self.context.log.warning(
                f"{path}: its checkpoint could not be recorded ({type(exc).__name__}: {exc}); a re-execution "
                "will run it again"
            )
