"""The approval gate op: approves, rejects, or parks the run until a reviewer decides (run tags)."""

import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import NoReturn

from dagster import (
    DagsterRun,
    Failure,
    In,
    MetadataValue,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    RetryRequested,
)
from dagster import Nothing as DagsterNothing

# not exported by name in Dagster 1.13; the only way to attach metadata to an event outside a step's own output
from dagster._core.events import EngineEventData
from pydantic import PydanticUserError, ValidationError
from pydantic.json_schema import PydanticJsonSchemaWarning

from flujo_dagster import names
from flujo_dagster.adapter.control.audit import AuditKind, audit, record_ignored
from flujo_dagster.adapter.control.chain import proven_root
from flujo_dagster.adapter.control.evidence import evidence
from flujo_dagster.adapter.control.launch import first_resume
from flujo_dagster.adapter.ops.leaf import StepWiring, ins_for, not_retried, outs_for
from flujo_dagster.adapter.ops.map import mapped_gate_id
from flujo_dagster.adapter.storage.approval_settings import ApprovalSettings
from flujo_dagster.adapter.storage.types import key_type
from flujo_dagster.config import inbox_gate_url
from flujo_dagster.dsl.approval import Approval
from flujo_dagster.dsl.pipeline import Pipeline
from flujo_dagster.errors import ApprovalRejectedError, ConfigurationError
from flujo_dagster.names import (
    AFTER_INPUT,
    APPROVAL_SETTINGS_KEY,
    APPROVED_OUTPUT,
    AWAITING_PREFIX,
    DECISION_OUTPUT,
    IO_MANAGER_KEY,
    NO_RUN_RETRY_TAG,
    PARKED_RUN_TAG,
    PARKED_TAG,
    REJECTED_OUTPUT,
    REQUEST_PREFIX,
    RETRY_BEFORE_PARK_TAG,
    io_name,
)
from flujo_dagster.runtime.approvals import (
    TIMEOUT_BY,
    Decision,
    Outcome,
    Policy,
    Request,
    payload_hash,
    state_hash,
    tally,
)
from flujo_dagster.runtime.tags import cut
from flujo_dagster.runtime.values import jsonable, to_json_bytes

__all__ = [
    "EDIT_SCHEMAS_FIELD",
    "MAX_EDIT_SCHEMAS_BYTES",
    "VERDICT_LABELS",
    "approval_op",
    "edit_schemas",
    "preview",
]

VERDICT_LABELS = ("approve", "reject")
"""The labels of a routing gate's two paths, as its `decision` output says which was taken."""
PREVIEW_CHARS = 2_000
SHORT_PREVIEW_CHARS = 160
SHORT_PREVIEW_TOTAL_CHARS = 4_000
WAIT_DELAYS_S = (5, 10, 20, 40, 60)
EDIT_CHARS = 500
"""At most this many characters of an edited key's value before and after, in the audit trail."""
EDIT_SCHEMAS_FIELD = "edit_schemas"
"""The field of a gate's `request` audit event holding each editable key's JSON Schema (JSON text, or null)."""
MAX_EDIT_SCHEMAS_BYTES = 64 * 1024
"""At most this many bytes (UTF-8) of editable keys' JSON Schemas in one request audit event, all keys together."""


def preview(shown: Mapping[str, object]) -> str:
    """The shown keys as Markdown for a reviewer (each value's JSON, size-bounded)."""
    parts = []
    for key, value in shown.items():
        text = value if isinstance(value, str) else repr(value)
        if len(text) > PREVIEW_CHARS:
            text = text[:PREVIEW_CHARS] + f"... ({len(text)} characters)"
        parts.append(f"**{key}**\n\n```\n{text}\n```")
    return "\n\n".join(parts)


def plain_preview(shown: Mapping[str, object]) -> str:
    """The shown keys as indented plain text (the readable request in a run's log), each value size-bounded."""
    parts = []
    for key, value in shown.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
        if len(text) > PREVIEW_CHARS:
            text = text[:PREVIEW_CHARS] + f"... ({len(text)} characters)"
        parts.append(f"  {key}:\n" + "\n".join(f"    {line}" for line in text.splitlines()))
    return "\n".join(parts)


def short_preview(dumped: Mapping[str, object]) -> str:
    """One line per shown key, each value cut to `SHORT_PREVIEW_CHARS`, the whole to `SHORT_PREVIEW_TOTAL_CHARS`
    (the request tag, `flujo-dagster pending`: the request tag must stay within the size a reader takes)."""
    lines = []
    for key, value in dumped.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        text = " ".join(text.split())
        cut = text[:SHORT_PREVIEW_CHARS] + ("..." if len(text) > SHORT_PREVIEW_CHARS else "")
        lines.append(f"{key}: {cut}")
    whole = "\n".join(lines)
    return whole if len(whole) <= SHORT_PREVIEW_TOTAL_CHARS else whole[: SHORT_PREVIEW_TOTAL_CHARS - 3] + "..."


def _commands(run_id: str, gate_id: str) -> str:
    return (
        f"flujo-dagster approve {run_id} --gate '{gate_id}' --by NAME [--comment TEXT]\n"
        f"flujo-dagster reject {run_id} --gate '{gate_id}' --by NAME --comment TEXT"
    )


class _Parked(Exception):
    """The gate parked the run: its compute yields no output."""


@dataclass(frozen=True)
class _Attempt:
    """One attempt of one gate: the op's context, the run as stored now (the run's own snapshot is stale), the
    gate's id in tags and the step key its events are recorded on."""

    context: OpExecutionContext
    run: DagsterRun
    gate_id: str
    step_key: str


def approval_op(pipeline: Pipeline, gate: Approval, wiring: StepWiring) -> OpDefinition:
    """The gate op of `gate`: reads the shown keys and every other key definitely written before it
    (`wiring.reads`: the run state), gathers the decisions bound to exactly that state from the run's proven
    chain (tags re-read from the instance: the run's own snapshot is stale; audit events); goes on with them
    (edits applied), fails on a rejection, or parks the run."""
    node = wiring.op

    def compute(context: OpExecutionContext, inputs: dict[str, object]) -> Iterator[Output[object]]:
        attempt = _Attempt(
            context=context,
            run=context.instance.get_run_by_id(context.run_id) or context.run,
            gate_id=mapped_gate_id(context, node),
            step_key=context.get_step_execution_context().step.key,
        )
        first = first_resume(context.instance, attempt.run)
        if first is not None:  # a resume launched twice for the same decisions (a race): only the first goes on
            raise Failure(
                f"run {context.run_id} is a second resume of run {attempt.run.parent_run_id} for the same "
                f"decisions; run {first.run_id} resumes it, so this run stops before gate {attempt.gate_id} "
                "(nothing after it ran)",
                allow_retries=False,
            )
        values = {
            k: jsonable(key_type(pipeline.name, k, pipeline.fields[k]).adapter, inputs[io_name(k)])
            for k in wiring.reads
        }
        shown = {k: inputs[io_name(k)] for k in gate.show}
        dumped = {k: values[k] for k in gate.show}
        # each value as the JSON the IO manager stores (dates, bytes, decimals...), hashed with its key
        state = state_hash({k: to_json_bytes(v).decode() for k, v in values.items()})
        try:
            decision = _decision(attempt, pipeline, gate, wiring, dumped, state)
        except _Parked:
            return  # no output: the steps after the gate are skipped, and the run ends SUCCESS (ops/park.py)
        edits = _edits(pipeline, values, decision)
        yield from _decided(attempt, gate, wiring, decision, shown, payload_hash(dumped), edits)

    routes = bool(gate.on_reject)
    outs: dict[str, Out] = {  # all optional: a park yields none of them
        **outs_for(pipeline, gate.show, frozenset(gate.show)),
        APPROVED_OUTPUT: Out(DagsterNothing, is_required=False),
    }
    if routes:
        outs[REJECTED_OUTPUT] = Out(DagsterNothing, is_required=False)
        outs[DECISION_OUTPUT] = Out(str, io_manager_key=IO_MANAGER_KEY, is_required=False)
    return OpDefinition(
        compute_fn=compute,
        name=wiring.definition,
        # `after`: the gate also waits for what the steps after it read from before it (see compile/graph/gates.py)
        ins={**ins_for(pipeline, wiring.reads, gated=wiring.gated), AFTER_INPUT: In(DagsterNothing)},
        outs=outs,
        required_resource_keys={APPROVAL_SETTINGS_KEY},
        description=f"approval gate {wiring.path}: shows {', '.join(gate.show)} to a reviewer",
        tags=names.op_tags(names.OpKind.APPROVAL, wiring.path),
    )


def _secret(attempt: _Attempt, wiring: StepWiring, settings: ApprovalSettings) -> str | None:
    """The decision secret; `ConfigurationError` (not retried) when signed decisions need it and it is not set."""
    secret = settings.secret()
    if settings.require_signed_decisions and secret is None:
        missing = ConfigurationError(
            f"require_signed_decisions=True, but {settings.secret_env} is not set where run "
            f"{attempt.context.run_id} executes: set it to the approvers' secret in the code location's environment"
        )
        raise not_retried(missing, wiring) from missing
    return secret


def _decision(
    attempt: _Attempt, pipeline: Pipeline, gate: Approval, wiring: StepWiring, dumped: dict[str, object], state: str
) -> Decision:
    """The decision that counts for the gate in run state `state` (edits typed); without one, the gate waits
    (`mode="wait"`) or parks the run."""
    context, run = attempt.context, attempt.run
    settings: ApprovalSettings = getattr(context.resources, APPROVAL_SETTINGS_KEY)
    secret = _secret(attempt, wiring, settings)
    element = context.get_mapping_key()  # one gate per element of a Map: its path says which
    fresh = Request(
        path=names.element_path(wiring.path, element) if element else wiring.path,
        payload_hash=payload_hash(dumped),
        state_hash=state,
        show=gate.show,
        policy=Policy.of(
            gate, signed=settings.require_signed_decisions, allow_unknown_requester=settings.allow_unknown_requester
        ),
        preview=short_preview(dumped),
        editable=tuple(gate.decision.model_fields) if gate.decision is not None else (),
    )
    root = proven_root(context.instance, run)  # never the root a client named
    request = _request_for(run.tags, attempt.gate_id, fresh, secret, root)
    found = evidence(context.instance, run, [attempt.gate_id])[attempt.gate_id]
    outcome = tally(
        found.records,
        request,
        binding=found.binding,
        requester=found.requester,
        now=datetime.now(UTC),
        secret=secret,
        decision_model=gate.decision,
        edit=partial(_typed_edits, pipeline),
    )
    for key, reason in outcome.ignored:
        context.log.warning(f"{wiring.path}: ignored the decision in tag {key}: {reason}")
    record_ignored(context.instance, run, attempt.gate_id, outcome.ignored, step_key=attempt.step_key)  # once
    if outcome.decision is not None:
        return outcome.decision
    # recorded before a wait, so that a reviewer can decide while the gate polls
    _record_request(attempt, pipeline, request, first=context.retry_number == 0)
    delay = _wait_delay(gate, request, context.retry_number)
    if delay is not None:
        raise RetryRequested(max_retries=context.retry_number + 1, seconds_to_wait=delay)
    _park(attempt, wiring, request, dumped, outcome)


def _decided(
    attempt: _Attempt,
    gate: Approval,
    wiring: StepWiring,
    decision: Decision,
    shown: dict[str, object],
    digest: str,
    edits: dict[str, dict[str, str]],
) -> Iterator[Output[object]]:
    """Record the decision (audit events, with each edit's value before and after, tags); then fail on a
    rejection, take the `on_reject` path, or go on with the shown values (edits applied), the decision riding on
    each as metadata (and, through the event log, on every asset downstream: `ops/review.py`)."""
    context, run, gate_id = attempt.context, attempt.run, attempt.gate_id
    record = {
        names.STEP_PATH: wiring.path,
        names.approval("gate"): gate_id,
        names.approval("verdict"): decision.verdict,
        names.approval("by"): decision.by,
        names.approval("at"): decision.at,
        names.approval("comment"): decision.comment,
        names.approval("payload_hash"): digest,
        names.approval("edited"): ", ".join(sorted(decision.values)),
    }
    if decision.by == TIMEOUT_BY:
        audit(
            context.instance,
            run,
            "timeout",
            gate_id,
            decision.comment,
            step_key=attempt.step_key,
            verdict=decision.verdict,
        )
    kind: AuditKind = "approved" if decision.verdict == "approve" else "rejected"
    fields: dict[str, object] = {"by": decision.by, "at": decision.at, "comment": decision.comment}
    fields.update(payload_hash=digest, **({"edits": edits} if edits else {}))
    audit(context.instance, run, kind, gate_id, f"by {decision.by}", step_key=attempt.step_key, **fields)
    failing = decision.verdict == "reject" and not gate.on_reject
    _mark_decided(context, gate_id, failing=failing)
    if failing:
        why = f": {decision.comment}" if decision.comment else ""
        error = ApprovalRejectedError(f"{wiring.path}: rejected by {decision.by} at {decision.at}{why}")
        raise not_retried(error, wiring) from error
    if gate.on_reject:  # routes like a branch: the join after both paths reads the verdict
        yield Output(decision.verdict, DECISION_OUTPUT)
    if decision.verdict == "reject":
        yield Output(None, REJECTED_OUTPUT, metadata=record)
        return
    values = {**shown, **decision.values}
    for key in gate.show:  # the record rides on each shown key too: an asset written here carries it
        yield Output(values[key], io_name(key), metadata=record)
    yield Output(None, APPROVED_OUTPUT, metadata=record)


def _request_for(tags: Mapping[str, str], gate_id: str, fresh: Request, secret: str | None, root: str) -> Request:
    """The gate's request: an earlier one for the same content keeps its time (the deadline runs from the
    first request); with a secret, only an earlier request sealed with it for this proven run chain and gate
    does. An earlier request that cannot be read counts as none (the deadline runs from now)."""
    raw = tags.get(REQUEST_PREFIX + gate_id)
    if raw is not None:
        earlier = Request.from_tag(raw, gate=gate_id)
        if (
            isinstance(earlier, Request)
            and (earlier.payload_hash, earlier.state_hash) == (fresh.payload_hash, fresh.state_hash)
            and (secret is None or earlier.intact(secret, root=root, gate=gate_id))
        ):
            fresh = fresh.model_copy(update={"requested_at": earlier.requested_at})
    return fresh.sealed(secret, root=root, gate=gate_id) if secret is not None else fresh


def _mark_decided(context: OpExecutionContext, gate_id: str, *, failing: bool) -> None:
    """Mark the gate decided in this run (a run re-executed by hand inherits its parent's `pending`), and, once
    no gate of the run waits any more, the run as not parked (with Dagster's automatic run retries as before a
    park of the old kind, which failed the run); off for a rejection that fails the run: it would only be
    rejected again."""
    run = context.instance.get_run_by_id(context.run_id) or context.run
    updates = {AWAITING_PREFIX + gate_id: "decided"}
    others = [k for k, v in run.tags.items() if k.startswith(AWAITING_PREFIX) and v == "pending"]
    if set(others) <= {AWAITING_PREFIX + gate_id} and run.tags.get(PARKED_TAG) == "true":
        updates[PARKED_TAG] = "false"
        if RETRY_BEFORE_PARK_TAG in run.tags:
            updates[NO_RUN_RETRY_TAG] = run.tags[RETRY_BEFORE_PARK_TAG]
    if failing:
        updates[NO_RUN_RETRY_TAG] = "false"
    context.instance.add_run_tags(context.run_id, updates)


def _wait_delay(gate: Approval, request: Request, retry_number: int) -> float | None:
    """How long a `mode="wait"` gate waits before it looks again (growing; up to its deadline), or None when it
    parks now."""
    if gate.mode != "wait":
        return None
    deadlines = request.deadlines()
    if deadlines is None:
        return WAIT_DELAYS_S[retry_number] if retry_number < len(WAIT_DELAYS_S) else None
    remaining = (deadlines[0] - datetime.now(UTC)).total_seconds()
    if remaining <= 0:
        return None
    return min(WAIT_DELAYS_S[min(retry_number, len(WAIT_DELAYS_S) - 1)], remaining)


def _typed_edits(pipeline: Pipeline, decision: Decision) -> Decision | str:
    """`decision` with its edited values as their keys' own types (what later steps read), or why one does
    not fit its key."""
    typed: dict[str, object] = {}
    for key, value in decision.values.items():
        try:
            typed[key] = key_type(pipeline.name, key, pipeline.fields[key]).coerce(value)
        except ValidationError as exc:
            return f"its edited value of {key!r} is not a valid {key!r}: {exc.errors(include_url=False)}"
    return decision.model_copy(update={"values": typed})


def _edits(pipeline: Pipeline, before: Mapping[str, object], decision: Decision) -> dict[str, dict[str, str]]:
    """Each key the decision edits: its value before (the JSON the reviewer saw) and after the edit, each cut to
    `EDIT_CHARS` characters (the audit trail's record of the edit)."""
    edits: dict[str, dict[str, str]] = {}
    for key, value in decision.values.items():
        after = jsonable(key_type(pipeline.name, key, pipeline.fields[key]).adapter, value)
        edits[key] = {
            "before": cut(to_json_bytes(before.get(key)).decode(), EDIT_CHARS),
            "after": cut(to_json_bytes(after).decode(), EDIT_CHARS),
        }
    return edits


def _park(
    attempt: _Attempt, wiring: StepWiring, request: Request, dumped: dict[str, object], outcome: Outcome
) -> NoReturn:
    """Park the run here (no worker held, not a failure): tag it parked (`flujo/parked`, `flujo/parked_run`),
    record the request, readable, as an engine event on the gate's step, and leave the compute without output,
    so the steps after the gate are skipped and the run ends SUCCESS."""
    context, gate_id = attempt.context, attempt.gate_id
    context.instance.add_run_tags(context.run_id, {PARKED_TAG: "true", PARKED_RUN_TAG: context.run_id})
    inbox = _inbox_link(context, gate_id)
    deadlines = request.deadlines()
    deadline = (
        f"{deadlines[0].isoformat(timespec='seconds')}, then on_timeout={request.policy.on_timeout!r}"
        if deadlines
        else "none"
    )
    who = request.policy.who(escalated=outcome.stage != "open")
    commands = _commands(context.run_id, gate_id)
    message = (
        f"parked at {wiring.path}: waiting for {outcome.waiting_for}\n"
        f"who may decide: {who}\ndeadline: {deadline}\n"
        f"payload (sha256 {request.payload_hash}):\n{plain_preview(dumped)}\n"
        f"decide with:\n{commands}" + (f"\nor in the inbox: {inbox}" if inbox else "")
    )
    context.instance.report_engine_event(
        message,
        dagster_run=attempt.run,
        engine_event_data=EngineEventData(
            metadata={
                names.STEP_PATH: wiring.path,
                PARKED_TAG: True,
                names.approval("gate"): gate_id,
                names.approval("payload"): MetadataValue.md(preview(dumped)),
                names.approval("payload_hash"): request.payload_hash,
                names.approval("approvers"): who,
                names.approval("waiting_for"): outcome.waiting_for,
                names.approval("deadline"): deadline,
                names.approval("commands"): MetadataValue.text(commands),
                **({names.approval("inbox"): MetadataValue.url(inbox)} if inbox else {}),
            }
        ),
        step_key=attempt.step_key,
    )
    raise _Parked


def _inbox_link(context: OpExecutionContext, gate_id: str) -> str | None:
    """The gate's page in the reviewers' inbox; None when no inbox is configured, or (with a warning) when
    `FLUJO_DAGSTER_INBOX_URL` is not an http(s) URL: a bad link never stops a gate."""
    try:
        return inbox_gate_url(context.run_id, gate_id)
    except ConfigurationError as exc:
        context.log.warning(f"no inbox link for gate {gate_id}: {exc}")
        return None


def edit_schemas(pipeline: Pipeline, keys: tuple[str, ...]) -> dict[str, str | None]:
    """The JSON Schema (pydantic's, Draft 2020-12, as compact JSON text) of each editable key's type, for the
    inbox to check edits before they are recorded; None for a key whose type has no JSON Schema or whose schema
    does not fit in what is left of `MAX_EDIT_SCHEMAS_BYTES` (the inbox then checks only the edit's JSON kind)."""
    schemas: dict[str, str | None] = {}
    room = MAX_EDIT_SCHEMAS_BYTES
    for key in keys:
        schemas[key] = text = _schema_text(pipeline, key)
        if text is not None and len(text) > room:  # ASCII: one byte a character
            schemas[key] = None
        elif text is not None:
            room -= len(text)
    return schemas


def _schema_text(pipeline: Pipeline, key: str) -> str | None:
    """The JSON Schema of `key`'s type as compact ASCII JSON, or None when pydantic makes none for it."""
    if key not in pipeline.fields:
        return None
    try:
        with warnings.catch_warnings():  # a default with no JSON form is left out of the schema: fine here
            warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
            schema = key_type(pipeline.name, key, pipeline.fields[key]).adapter.json_schema()
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (PydanticUserError, TypeError, ValueError, RecursionError):
        return None


def _record_request(attempt: _Attempt, pipeline: Pipeline, request: Request, *, first: bool) -> None:
    """Record on the run what the gate waits for: `flujo/awaiting/<gate>=pending` and the request (step path,
    payload hash, policy, time), and, when an inbox is configured, the gate's inbox page (`flujo/inbox/<gate>`); on
    a gate's first attempt in a run, also as an audit event, with the JSON Schema of each editable key's type
    (`edit_schemas`: the inbox checks edits with it)."""
    context, run, gate_id = attempt.context, attempt.run, attempt.gate_id
    tags = {AWAITING_PREFIX + gate_id: "pending", REQUEST_PREFIX + gate_id: request.to_tag()}
    inbox = _inbox_link(context, gate_id)
    context.instance.add_run_tags(context.run_id, {**tags, **({names.inbox_tag(gate_id): inbox} if inbox else {})})
    if first:
        fields: dict[str, object] = {
            "path": request.path,
            "payload_hash": request.payload_hash,
            "requested_at": request.requested_at,
        }
        if request.editable:
            fields[EDIT_SCHEMAS_FIELD] = edit_schemas(pipeline, request.editable)
        who = request.policy.who(escalated=False)
        message = f"{request.path} waits for {who}"
        audit(context.instance, run, "request", gate_id, message, step_key=attempt.step_key, **fields)
