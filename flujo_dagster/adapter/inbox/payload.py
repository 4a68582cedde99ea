"""What a parked gate shows, read back for the inbox: the gate's step (its park event), the outputs its shown
keys were loaded from (its input events), the files the IO manager stored them in (their `flujo/path`, in the
run or an earlier run of its proven chain), and their values. The values count only when their payload hash is
the request's: what the reviewer sees is exactly what a decision is bound to. Otherwise (a file gone, changed,
too large) the page shows the request's short preview instead, and says why."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dagster import DagsterEventType, DagsterInstance, DagsterRun
from upath import UPath

from flujo_dagster import names
from flujo_dagster.adapter.storage.budgets import chain_of
from flujo_dagster.adapter.storage.files import read_file
from flujo_dagster.errors import StorageError
from flujo_dagster.runtime.approvals import Request, payload_hash

__all__ = ["MAX_FILE_BYTES", "Shown", "shown_values"]

MAX_FILE_BYTES = 4 * 1024 * 1024
"""The largest stored file the inbox reads to show a value (a larger value is shown as its short preview)."""


@dataclass(frozen=True)
class Shown:
    """The shown values of a gate (None when they could not be read) and, then, why."""

    values: dict[str, object] | None
    problem: str = ""


def _gate_step(instance: DagsterInstance, run: DagsterRun, gate: str) -> str | None:
    """The step key of the gate that parked `run` at `gate` (its latest park event)."""
    found = None
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.engine_event_data if event is not None else None
        metadata: Mapping[str, object] = data.metadata if data is not None else {}
        gate_value = metadata.get(names.approval("gate"))
        if names.PARKED_TAG in metadata and getattr(gate_value, "value", None) == gate and entry.step_key:
            found = entry.step_key
    return found


def _sources(instance: DagsterInstance, run: DagsterRun, step: str) -> dict[str, tuple[str, str]]:
    """The (upstream step, output) each input of `step` in `run` was loaded from."""
    sources: dict[str, tuple[str, str]] = {}
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.LOADED_INPUT):
        event = entry.dagster_event
        data = event.event_specific_data if event is not None else None
        if entry.step_key != step or data is None:
            continue
        upstream_step, output = getattr(data, "upstream_step_key", None), getattr(data, "upstream_output_name", None)
        if isinstance(upstream_step, str) and isinstance(output, str):
            sources[str(getattr(data, "input_name", ""))] = (upstream_step, output)
    return sources


def _stored_paths(instance: DagsterInstance, runs: Sequence[DagsterRun]) -> dict[tuple[str, str], str]:
    """Where each (step, output) of `runs` was stored (`flujo/path`), the first run that stored it winning."""
    paths: dict[tuple[str, str], str] = {}
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.HANDLED_OUTPUT):
            event = entry.dagster_event
            data = event.event_specific_data if event is not None else None
            metadata: Mapping[str, object] = getattr(data, "metadata", None) or {}
            path = getattr(metadata.get(names.PATH), "path", None)
            output = getattr(data, "output_name", None)
            if entry.step_key and isinstance(output, str) and isinstance(path, str):
                paths.setdefault((entry.step_key, output), path)
    return paths


def _value(path: str, key: str, where: str) -> object:
    """The value in the stored envelope at `path`; `StorageError`/`ValueError` when it cannot be read."""
    file = UPath(path)
    if file.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"the stored value of {key!r} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    envelope = json.loads(read_file(file, key=key, where=where))
    if not isinstance(envelope, dict) or "value" not in envelope:
        raise ValueError(f"the stored file of {key!r} is not a flujo_dagster envelope")
    return envelope["value"]


def _bundled(keys: object, key: str) -> object:
    """Key `key` of a bundle's stored value; `ValueError` when it holds no such key."""
    if not isinstance(keys, dict) or key not in keys:
        raise ValueError(f"the stored bundle that should hold {key!r} does not")
    return keys[key]


def shown_values(instance: DagsterInstance, run: DagsterRun, gate: str, request: Request) -> Shown:
    """The values gate `gate` of parked `run` shows, exactly as its request's payload hash says (never raises)."""
    try:
        step = _gate_step(instance, run, gate)
        if step is None:
            return Shown(None, "the gate's park event is not in the run's event log")
        sources = _sources(instance, run, step)
        paths = _stored_paths(instance, chain_of(run, instance))
        values: dict[str, object] = {}
        for key in request.show:
            source = sources.get(names.io_name(key))
            path = paths.get(source) if source is not None else None
            if path is None:
                return Shown(None, f"where the value of {key!r} is stored is not in the run's event log")
            values[key] = _value(path, key, f"run {run.run_id}")
            if source is not None and source[1] == names.BUNDLE_OUTPUT:  # an inline op's bundle: one of its keys
                values[key] = _bundled(values[key], key)
    except (StorageError, OSError, ValueError, RecursionError) as exc:
        return Shown(None, f"the shown values cannot be read: {str(exc)[:300]}")
    if payload_hash(values) != request.payload_hash:
        return Shown(None, "the stored values are not the ones the gate showed (their payload hash differs)")
    return Shown(values)
