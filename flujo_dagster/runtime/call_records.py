"""The record of every agent call (one `run_agent`, one attempt of an agent step): its rendered messages, output,
usage, the model that answered, latency, cache status and budget decision, redacted and bounded
(`runtime.redaction`); the file one op's records are stored in, and that file read back by a total, size-capped
parser (docs/calls.md). Pure: the adapter stores and finds the files."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_core import PydanticSerializationError, to_jsonable_python

from flujo_dagster.errors import UsageLimitExceededError
from flujo_dagster.runtime.agents import AgentCall
from flujo_dagster.runtime.records import Charge, Meter
from flujo_dagster.runtime.redaction import Bounds, Cuts, Redactor, clean

__all__ = [
    "FORMAT",
    "CallLog",
    "CallWatch",
    "CallsFile",
    "budget_decision",
    "cache_status",
    "encode_records",
    "parse_records",
]

FORMAT = "flujo_dagster.calls"
VERSION = 1
_SHRINK = (1000, 200)  # the text bounds tried, in turn, when a record is above its byte bound
_KEPT_ENDS = 2  # messages kept at each end when the middle ones must go
_READ = Bounds(text=1_000_000, items=100_000, depth=32)  # what a record read back keeps (files are written smaller)


def cache_status(call: AgentCall | None) -> str:
    """Whether the agent-call cache answered `call`: `hit` (every request served, none made), `miss` (some
    request made; its hits, if any, are in `cache_hits`) or `off` (`cache=False`, no cache, a failed call)."""
    if call is None or not call.cache_consulted:
        return "off"
    return "hit" if call.cache_hits and not call.requests else "miss"


def budget_decision(
    scopes: Sequence[str] | None, charges: Sequence[Charge], error: BaseException | None
) -> dict[str, object]:
    """What the budget ledger decided for one call: `unbudgeted` (no `scopes`), or the scopes, each request's
    reservation and what it was settled at, and whether a budget stopped the call."""
    if scopes is None:
        return {"decision": "unbudgeted"}
    requests = [
        {
            "model": c.model,
            "reserved_usd": None if c.reserved_usd is None else str(c.reserved_usd),
            "reserved_tokens": c.reserved_tokens,
            "charged_usd": None if c.cost_usd is None else str(c.cost_usd),
            "settled": c.price_source if c.price_source.startswith("reservation") else "reconciled",
        }
        for c in charges
    ]
    if isinstance(error, UsageLimitExceededError):
        decision = "stopped by the budget"
    elif any(r["settled"] != "reconciled" for r in requests):
        decision = "worst case charged"
    else:
        decision = "reserved and reconciled"
    return {"decision": decision, "scopes": list(scopes), "requests": requests}


def _messages_json(messages: Sequence[ModelMessage]) -> object:
    try:
        return ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        return f"[messages not serializable: {type(exc).__name__}]"


def _output_json(output: object) -> object:
    try:
        return to_jsonable_python(output, fallback=lambda v: f"[{type(v).__name__}]")
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        return f"[output not serializable: {type(exc).__name__}]"


def _ends(messages: object, keep: int) -> object:
    """`messages` with at most `keep` of them, the first and the last halves (the answer is at the end)."""
    if not isinstance(messages, list) or len(messages) <= keep:
        return messages
    half = max(keep // 2, 1)
    return [*messages[:half], f"[cut: {len(messages) - 2 * half} middle messages left out]", *messages[-half:]]


def _error_text(error: BaseException) -> str:
    """`Class: message` of `error`; its class alone when its message cannot be made (a broken `__str__`)."""
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:  # noqa: BLE001 (a user's exception whose __str__ raises: the record keeps its class)
        return f"{type(error).__name__}: (its message cannot be shown)"


def _size(record: Mapping[str, object]) -> int:
    return len(json.dumps(record, ensure_ascii=True))


def bounded(
    head: dict[str, object], messages: object, output: object, redactor: Redactor, bounds: Bounds
) -> dict[str, object]:
    """One record: `head` (small fields) with `messages` and `output` (JSON values) redacted and cut so that its
    JSON is at most `bounds.record` bytes: strings cut shorter, then middle messages left out, then messages and
    output left out; `cut` says what was, `redactions` how many secrets were replaced."""
    messages = _ends(messages, bounds.items - 1)
    for limit in (bounds.text, *(s for s in _SHRINK if s < bounds.text)):
        cuts = Cuts()
        record = {
            **{k: clean(v, redactor, bounds, cuts) for k, v in head.items()},
            "messages": clean(messages, redactor, bounds, cuts, text=limit),
            "output": clean(output, redactor, bounds, cuts, text=limit),
        }
        if limit != bounds.text:
            cuts.notes.append(f"texts cut to {limit} characters to fit the record bound of {bounds.record} bytes")
        record["cut"], record["redactions"] = cuts.summary(), cuts.redacted
        if _size(record) <= bounds.record:
            return record
    kept = record["messages"]
    if isinstance(kept, list) and len(kept) > 2 * _KEPT_ENDS:
        dropped = len(kept) - 2 * _KEPT_ENDS
        record["messages"] = [*kept[:_KEPT_ENDS], f"[cut: {dropped} messages left out]", *kept[-_KEPT_ENDS:]]
        record["cut"] = [*cuts.summary(), f"{dropped} middle messages left out to fit the record bound"]
        if _size(record) <= bounds.record:
            return record
    record["messages"], record["output"] = "[cut: left out]", "[cut: left out]"
    record["cut"] = [*cuts.summary(), f"messages and output left out: above the record bound of {bounds.record} bytes"]
    for key in ("error",):
        if _size(record) > bounds.record and isinstance(record.get(key), str):
            record[key] = str(record[key])[:1000]
    return record


class CallWatch:
    """One agent call being recorded: started by `CallLog.begin`, ended by `finished` or `failed`."""

    def __init__(
        self, log: CallLog, path: str, meter: Meter, scopes: Sequence[str] | None, configured: str | None
    ) -> None:
        self.log, self.path, self.meter, self.scopes, self.configured = log, path, meter, scopes, configured
        self.attempt = log.next_attempt(path)
        self.first = len(meter.charges)
        self.started = time.perf_counter()
        self.at = datetime.now(UTC).isoformat()

    def _head(self, status: str, latency: float, model: str, source: str) -> dict[str, object]:
        return {
            "path": self.path,
            "attempt": self.attempt,
            "status": status,
            "started_at": self.at,
            "latency_s": round(latency, 6),
            "model": model,
            "model_source": source,
        }

    def finished(self, call: AgentCall, source: str, captured: Sequence[ModelMessage]) -> None:
        """Record `call`, answered (its messages, or those `captured` when it carries none)."""
        charges = self.meter.charges[self.first :]
        latency = call.latency_s if call.latency_s is not None else time.perf_counter() - self.started
        head = self._head("ok", latency, call.model, source)
        head["cache"] = cache_status(call)
        head["usage"] = {
            "requests": call.requests,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cache_read_tokens": call.cache_read_tokens,
            "cache_write_tokens": call.cache_write_tokens,
            "unmeasured_requests": call.unmeasured_requests,
        }
        head["cost_usd"] = None if call.cost_usd is None else str(call.cost_usd)
        head["price_source"] = call.price_source
        head["budget"] = budget_decision(self.scopes, charges, None)
        self.log.add(head, _messages_json(call.messages or captured), _output_json(call.output))

    def failed(self, error: BaseException, captured: Sequence[ModelMessage]) -> None:
        """Record the call, failed with `error` (its messages as far as the run got)."""
        charges = self.meter.charges[self.first :]
        model = charges[-1].model if charges else (self.configured or "unknown")
        head = self._head("failed", time.perf_counter() - self.started, model, "")
        head["cache"] = cache_status(None)
        head["usage"] = {
            "requests": sum(c.requests for c in charges),
            "input_tokens": sum(c.input_tokens for c in charges),
            "output_tokens": sum(c.output_tokens for c in charges),
            "cache_read_tokens": sum(c.cache_read_tokens for c in charges),
        }
        costs = [c.cost_usd for c in charges if c.cost_usd is not None]
        head["cost_usd"] = str(sum(costs, Decimal(0))) if costs else None
        head["price_source"] = "; ".join(dict.fromkeys(c.price_source for c in charges if c.price_source))
        head["budget"] = budget_decision(self.scopes, charges, error)
        head["error"] = _error_text(error)
        self.log.add(head, _messages_json(captured), None)


class CallLog:
    """The records of the agent calls made in one op, in the order they ended, redacted with `redactor` and bounded
    by `bounds`."""

    def __init__(self, *, redactor: Redactor, bounds: Bounds | None = None) -> None:
        self.redactor = redactor
        self.bounds = bounds or Bounds()
        self.records: list[dict[str, object]] = []
        self._attempts: dict[str, int] = {}

    def next_attempt(self, path: str) -> int:
        """The number of the next call of the step at `path` (1 for its first attempt)."""
        self._attempts[path] = self._attempts.get(path, 0) + 1
        return self._attempts[path]

    def begin(self, path: str, *, meter: Meter, scopes: Sequence[str] | None, configured: str | None) -> CallWatch:
        """Start recording a call of the step at `path`: `meter` gets its charges, `scopes` are the budget scopes
        it is charged to (None: not budgeted), `configured` the model it was configured to run on."""
        return CallWatch(self, path, meter, scopes, configured)

    def add(self, head: dict[str, object], messages: object, output: object) -> None:
        """Keep one record, bounded and redacted."""
        self.records.append(bounded(head, messages, output, self.redactor, self.bounds))

    def document(self, *, run_id: str, step_key: str) -> bytes:
        """The file of these records (`encode_records`)."""
        return encode_records(self.records, run_id=run_id, step_key=step_key, limit=self.bounds.file)


def encode_records(records: Sequence[Mapping[str, object]], *, run_id: str, step_key: str, limit: int) -> bytes:
    """One op's file of records, a JSON object of at most `limit` bytes: once full, later records keep their
    small fields only (no messages, no output), and once even those do not fit they are counted as left out."""
    kept: list[Mapping[str, object]] = []
    size, left_out = 200 + len(run_id) + len(step_key), 0
    for record in records:
        line = _size(record)
        if size + line > limit:
            record = {**record, "messages": "[cut: file bound]", "output": "[cut: file bound]"}
            line = _size(record)
        if size + line > limit:
            left_out += 1
            continue
        kept.append(record)
        size += line + 2
    document = {"format": FORMAT, "version": VERSION, "run_id": run_id, "step_key": step_key, "calls": kept}
    if left_out:
        document["left_out"] = left_out
    return json.dumps(document, ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class CallsFile:
    """A file of records read back: the records that are objects with a step path, and what was wrong."""

    records: tuple[dict[str, object], ...]
    problems: tuple[str, ...] = ()


def parse_records(raw: bytes, *, where: str) -> CallsFile:
    """The records in `raw` (a file of `encode_records`, maybe edited by anyone who can write the storage):
    never raises; a file that is not one, and each record that is not an object with a string `path`, is a
    problem naming `where`."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return CallsFile((), (f"{where}: not a JSON file of call records ({type(exc).__name__})",))
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("calls"), list)
    ):
        return CallsFile((), (f"{where}: not a file of call records (format {FORMAT!r} with a list of calls)",))
    records: list[dict[str, object]] = []
    problems: list[str] = []
    for index, record in enumerate(document["calls"], start=1):
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            kept = clean(record, Redactor(), _READ, Cuts())  # nesting bounded, known token shapes hidden again
            assert isinstance(kept, dict)
            records.append(kept)
        else:
            problems.append(f"{where}: call {index} is not a call record (an object with a step path); skipped")
    left_out = document.get("left_out")
    if isinstance(left_out, int) and not isinstance(left_out, bool) and left_out > 0:
        problems.append(f"{where}: {left_out} call record(s) were left out when written (the file bound)")
    return CallsFile(tuple(records), tuple(problems))
