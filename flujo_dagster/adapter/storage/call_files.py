"""Where an op's agent-call records are stored and how they are read back: one file per op try, beside the op's
outputs (`<base>/<run_id>/<step_key>/flujo.calls/try-<n>.json`, through the safe `files` functions), written
when the op ends, and read back size-capped (docs/calls.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dagster import MetadataValue, OpExecutionContext
from upath import UPath

from flujo_dagster import names
from flujo_dagster.adapter.storage.files import Origin, read_file, write_file
from flujo_dagster.adapter.storage.io_manager import PydanticJsonIOManager
from flujo_dagster.adapter.storage.resources import AgentRuntime
from flujo_dagster.adapter.storage.runtime_config import model_secret
from flujo_dagster.config import known_secrets
from flujo_dagster.dsl.steps import AgentStep
from flujo_dagster.errors import StorageError
from flujo_dagster.names import IO_MANAGER_KEY
from flujo_dagster.runtime.call_records import CallLog, CallsFile, parse_records
from flujo_dagster.runtime.redaction import Bounds, Redactor

__all__ = ["MAX_READ_BYTES", "call_log_for", "calls_metadata", "calls_path", "read_calls", "store_calls"]

MAX_READ_BYTES = 2 * Bounds().file
"""The largest file of records read back (twice what is written): a larger one is reported, not read."""


def calls_path(root: UPath, run_id: str, step_key: str, retry: int) -> UPath:
    """Where the records of op `step_key`'s try `retry` (Dagster's retry number, 0 first) in run `run_id` live."""
    return PydanticJsonIOManager.output_path(root, run_id, step_key, names.CALLS_DIR, f"try-{retry}")


def call_log_for(runtime: AgentRuntime, steps: Iterable[AgentStep]) -> CallLog:
    """A new log of agent calls, redacting the known secrets: the environment's (`config.known_secrets`), the
    keys the runtime's provider settings hold or name, and those of the model objects it and `steps` hold."""
    own = [model_secret(getattr(step.agent, "model", None)) for step in steps]
    return CallLog(redactor=Redactor([*known_secrets(), *runtime.secret_values(), *own]))


def _root(context: OpExecutionContext) -> UPath:
    io = getattr(context.resources, IO_MANAGER_KEY, None)
    storage = context.instance.storage_directory()
    return io.root(storage) if isinstance(io, PydanticJsonIOManager) else PydanticJsonIOManager().root(storage)


def store_calls(context: OpExecutionContext, log: CallLog | None, path: str) -> dict[str, Any]:
    """Write `log`'s records (when it has some) and return the metadata that links them (`flujo/call_records`); a file
    that cannot be written is a warning naming the step at `path`, never the step's failure."""
    if log is None or not log.records:
        return {}
    root, step_key = _root(context), context.get_step_execution_context().step.key
    file = calls_path(root, context.run_id, step_key, context.retry_number)
    try:
        data = log.document(run_id=context.run_id, step_key=step_key)
        write_file(file, data, root=root, where=Origin(context.run_id, step_key, path))
    except StorageError as exc:
        context.log.warning(f"{path}: the records of its agent calls were not stored: {exc}")
        return {}
    return {names.CALL_RECORDS: MetadataValue.path(str(file))}


def read_calls(path: str, *, where: str) -> CallsFile:
    """The records in the file at `path` (named in a step's metadata), read without following symlinks, at most
    `MAX_READ_BYTES`; never raises: a missing, oversized or malformed file is a problem naming `where`."""
    file = UPath(path)
    try:
        size = file.stat().st_size
        if size > MAX_READ_BYTES:
            return CallsFile((), (f"{where}: {path} is {size} bytes, above {MAX_READ_BYTES}; not read",))
        raw = read_file(file, key=names.CALLS_DIR, where=where, limit=MAX_READ_BYTES)
    except (StorageError, OSError, ValueError) as exc:
        return CallsFile((), (f"{where}: {path} cannot be read: {str(exc)[:300]}",))
    if len(raw) > MAX_READ_BYTES:
        return CallsFile((), (f"{where}: {path} is above {MAX_READ_BYTES} bytes; not read",))
    return parse_records(raw, where=where)


def calls_metadata(metadata: Mapping[str, object]) -> str | None:
    """The path of the records file a step's metadata links (`flujo/call_records`), if any."""
    value = metadata.get(names.CALL_RECORDS)
    path = getattr(value, "path", value)
    return path if isinstance(path, str) else None
