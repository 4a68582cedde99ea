"""Checkpoints of an inline Parallel's branches and an inline Map's items: each one that finishes is recorded
(what it would merge into the state, and its step records) so that a re-execution of the op reuses it instead
of running it again, but only when it ran on the same inputs. The store behind them is the adapter's
(`CheckpointStore`); this module knows nothing of Dagster or of files."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

from pydantic import ValidationError

from flujo_dagster.runtime.records import Reporter, StepRecord
from flujo_dagster.runtime.values import adapter_for, from_json, jsonable, to_json_bytes

__all__ = ["REUSED", "Checkpoint", "CheckpointStore", "Checkpointer", "RecordTap", "reused_record"]

REUSED = "reused"
"""The status of a step record taken over from a checkpoint: the step did not run in this op."""

_log = logging.getLogger("flujo_dagster")
_SINKS: ContextVar[tuple[list[StepRecord], ...]] = ContextVar("flujo_checkpoint_sinks", default=())


@dataclass(frozen=True)
class Checkpoint:
    """What one finished branch or item wrote (key -> typed value) and the records of the steps it ran."""

    values: Mapping[str, object]
    records: tuple[StepRecord, ...]


class CheckpointStore(Protocol):
    """Where checkpoints are kept (the adapter's `OpCheckpoints` is one). Both methods are total for stored
    data: an unreadable, mismatched or unwritable checkpoint is a miss, which the store reports itself."""

    def load(self, path: str, inputs: str, keys: Collection[str], required: Collection[str] = ()) -> Checkpoint | None:
        """A checkpoint of the branch or item at `path` made on inputs digest `inputs`, writing only `keys` and
        at least `required`, from an earlier run this op re-executes; None when there is none."""
        ...

    def save(self, path: str, inputs: str, checkpoint: Checkpoint) -> None:
        """Record the checkpoint of the branch or item at `path` that ran on inputs digest `inputs`."""
        ...


def reused_record(record: StepRecord) -> StepRecord:
    """A checkpoint's record as this run reports it: status `reused`, nothing spent or run here (no model, so
    cost readers never count it twice; the run that made the call reports it)."""
    return replace(
        record,
        status=REUSED,
        duration_s=0.0,
        attempts=0,
        model=None,
        model_source=None,
        input_tokens=0,
        output_tokens=0,
        cache_read_tokens=0,
        requests=0,
        cost_usd=Decimal(0),
        price_source=None,
        usage_unknown=False,
    )


class RecordTap:
    """A reporter that passes every record on to `reporter` and also to each capture open in the current task
    (and the tasks it started), so a branch or item knows the records of the steps it ran, nested ones included."""

    def __init__(self, reporter: Reporter | None) -> None:
        self.reporter = reporter

    def step_finished(self, record: StepRecord) -> None:
        """Keep the record in every open capture and pass it on."""
        for sink in _SINKS.get():
            sink.append(record)
        if self.reporter is not None:
            self.reporter.step_finished(record)

    def attempt_failed(self, path: str, attempt: int, attempts: int, error: Exception, delay_s: float) -> None:
        """Pass it on."""
        if self.reporter is not None:
            self.reporter.attempt_failed(path, attempt, attempts, error, delay_s)

    @contextmanager
    def capture(self) -> Iterator[list[StepRecord]]:
        """Collect the records finished inside the block (in this task and the tasks it starts)."""
        sink: list[StepRecord] = []
        token = _SINKS.set((*_SINKS.get(), sink))
        try:
            yield sink
        finally:
            _SINKS.reset(token)


class _Lossy(ValueError):
    """A value whose JSON form does not load back as an equal value (a `SecretStr`, an excluded field, a lossy
    serializer): two different states would share a digest, so no checkpoint is made on it."""


def _canonical(annotation: object, value: object) -> object:
    """The value's JSON form with object keys sorted on dumping (so equal values give equal digests). Raises
    `_Lossy` when that form does not validate back to an equal value."""
    adapter = adapter_for(annotation)
    data = to_json_bytes(jsonable(adapter, value))
    try:
        exact = from_json(adapter, data) == value
    except ValidationError:
        exact = False
    if not exact:
        raise _Lossy
    return json.loads(data)


def _digest(canonical: object) -> str:
    data = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(data.encode()).hexdigest()


class Checkpointer:
    """What the interpreter's fan-outs use: the digest of the inputs a branch or item runs on, and running it
    through the store (reused when a checkpoint of the same path and inputs exists, recorded when it finishes).
    Without a store it only runs the work."""

    def __init__(self, store: CheckpointStore | None, fields: Mapping[str, object], reporter: Reporter | None) -> None:
        self.store = store
        self.fields = fields
        self.reporter = RecordTap(reporter)
        self._lossy: set[str] = set()

    def _lossy_key(self, key: str) -> None:
        if key not in self._lossy:
            self._lossy.add(key)
            _log.warning(
                f"key {key!r}: its value does not load back equal from its JSON form (a SecretStr, an excluded "
                "field, a lossy serializer), so the branches and items that run on it are not checkpointed"
            )

    def inputs(self, state: Mapping[str, object]) -> str | None:
        """The digest of every key of `state`, each dumped as its key's type (so any difference in what a branch
        or item could read is a miss); None without a store or when a value does not dump (then nothing is
        checkpointed; logged once per key when it does not load back equal)."""
        if self.store is None:
            return None
        pairs = []
        for k in sorted(state):
            try:
                pairs.append([k, _canonical(self.fields[k], state[k])])
            except _Lossy:
                self._lossy_key(k)
                return None
            except (KeyError, ValueError, TypeError):  # a key outside the context, a value that does not dump
                return None
        return _digest(pairs)

    def with_item(self, inputs: str | None, key: str, item: object) -> str | None:
        """`inputs` (the digest of the state before a Map, without its item key) extended by one item bound to
        `key`: what that item runs on, without dumping the whole state again per item."""
        if inputs is None:
            return None
        try:
            return _digest([inputs, key, _canonical(self.fields[key], item)])
        except _Lossy:
            self._lossy_key(key)
            return None
        except (KeyError, ValueError, TypeError):
            return None

    async def run(
        self,
        path: str,
        inputs: str | None,
        keys: Collection[str],
        work: Callable[[], Awaitable[None]],
        written: Callable[[], dict[str, object]],
        required: Collection[str] = (),
    ) -> dict[str, object]:
        """The values the branch or item at `path` writes (only `keys`): from a checkpoint of the same path and
        inputs (its records reported as reused), else by awaiting `work()` and reading `written()`, then
        recording them. A checkpoint lacking one of `required` is a miss."""
        if self.store is None or inputs is None:
            await work()
            return written()
        found = self.store.load(path, inputs, keys, required)
        if found is not None:
            for record in found.records:
                self.reporter.step_finished(reused_record(record))
            return dict(found.values)
        with self.reporter.capture() as records:
            await work()
        values = written()
        self.store.save(path, inputs, Checkpoint(values, tuple(records)))
        return values
