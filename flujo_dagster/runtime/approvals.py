"""Approval decisions, Dagster-free: the payload hash a decision is bound to, the request a parked gate records,
the decision records kept in run tags, their signatures, and the tally that says whether a gate is approved,
rejected, timed out or still waiting (and why each record that does not count is ignored).

The policy, request and decision are frozen pydantic models: read from their tags with `model_validate_json` and
written with `model_dump_json`. Signatures (HMAC) are computed from their own canonical JSON, not from the tags.

A decision is bound to the exact run state it was made for: the parked run, the gate, its step path, the hash of
the shown values and the hash of every value definitely written before the gate (the run's inputs included). It
counts only where all of them hold (`check_decision`), and names compare after `normal_name`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticSerializationError

from flujo_dagster.config import DECISION_SECRET_ENV
from flujo_dagster.dsl.approval import Approval, OnTimeout
from flujo_dagster.errors import ApprovalError
from flujo_dagster.names import decision_gate
from flujo_dagster.runtime.tags import cut, problems, read_record, tag_key_problem

__all__ = [
    "TIMEOUT_BY",
    "Binding",
    "Decision",
    "Outcome",
    "Policy",
    "Request",
    "Requester",
    "check_decision",
    "decision_record",
    "decision_tags",
    "normal_name",
    "parse_decision",
    "payload_hash",
    "sign",
    "state_hash",
    "tally",
    "unknown_requester",
]

TIMEOUT_BY = "flujo (timeout)"
"""Who a decision made by a gate's deadline is recorded as."""

Verdict = Literal["approve", "reject"]
Stage = Literal["open", "escalated", "timed_out"]
_RECORD = ConfigDict(frozen=True, extra="ignore", ser_json_inf_nan="constants")
"""Records in tags: fields they do not know are ignored; NaN and infinities are kept (as in `payload_hash`)."""
_FROM_TAG = {"from_tag": True}
_UNSET_OMITTED = frozenset({"mac", "state_hash", "allow_unknown_requester", "run_id", "gate", "path", "identity"})
"""Record fields written only when set: records without them keep the bytes they always had."""
_SIGNED_V2 = "flujo-decision/2"
"""Leads the text a decision's signature covers: a record signed in the earlier form never verifies."""
"""Validation context of a decision read from a tag: a record without a time has none (not the time it is read)."""


def _canonical(value: object) -> bytes:
    """The JSON that payload hashes and signatures are computed over: keys sorted, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def payload_hash(shown: Mapping[str, object]) -> str:
    """SHA-256 of the shown keys' JSON values (keys sorted): a decision counts only for exactly this content."""
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def state_hash(state: Mapping[str, object]) -> str:
    """SHA-256 of every key definitely written before a gate (the run's inputs included), each given as the JSON
    text it is stored as, computed as `payload_hash`: a decision counts only for the run state it was made in."""
    return payload_hash(state)


def normal_name(name: str) -> str:
    """A reviewer's or requester's name as compared: NFKC-normalised, case-folded, stripped (`Mallory` is
    `mallory`)."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


def _is_in(name: str, names: tuple[str, ...]) -> bool:
    return normal_name(name) in {normal_name(n) for n in names}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class Policy(BaseModel):
    """Who may decide on a gate, how many approvals it needs, its deadline and whether decisions must be signed:
    recorded with the request, so the gate, the sensor and the CLI apply the same rules."""

    model_config = _RECORD

    approvers: tuple[str, ...] | None = Field(None, fail_fast=True)  # one error for a tag of bad names
    quorum: Annotated[int, Field(ge=1)] = 1
    requester_may_approve: bool = False
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    on_timeout: OnTimeout = "reject"
    escalate_to: tuple[str, ...] = Field((), fail_fast=True)
    signed: bool = False
    allow_unknown_requester: bool = False

    @classmethod
    def of(cls, gate: Approval, *, signed: bool, allow_unknown_requester: bool = False) -> Policy:
        """The policy of `gate` (`allow_unknown_requester`: the deployment's `ApprovalSettings`)."""
        return cls(
            approvers=gate.approvers,
            quorum=gate.quorum,
            requester_may_approve=gate.requester_may_approve,
            timeout_s=gate.timeout.total_seconds() if gate.timeout is not None else None,
            on_timeout=gate.on_timeout,
            escalate_to=gate.escalate_to,
            signed=signed,
            allow_unknown_requester=allow_unknown_requester,
        )

    def who(self, *, escalated: bool) -> str:
        """Who may decide, for a message."""
        allowed = self.allowed(escalated=escalated)
        return ", ".join(allowed) if allowed is not None else "anyone"

    def allowed(self, *, escalated: bool) -> tuple[str, ...] | None:
        """The reviewers whose decisions count (None: anyone); past the deadline of an escalating gate, the
        reviewers of `escalate_to` too."""
        if self.approvers is None:
            return None
        return (*self.approvers, *self.escalate_to) if escalated else self.approvers


class Request(BaseModel):
    """What a parked gate waits for: its step path, the payload hash of what it shows, the state hash of every
    value definitely written before it, its policy, and when it first asked (for this content; the deadline runs
    from then). In its tag the policy's fields sit beside the request's own; `mac`, `state_hash` and
    `allow_unknown_requester` only when set."""

    model_config = _RECORD

    path: str
    payload_hash: str
    state_hash: str = ""
    show: tuple[str, ...] = Field(fail_fast=True)
    policy: Policy
    requested_at: str = Field(default_factory=_now)
    preview: str = ""
    editable: tuple[str, ...] = Field((), fail_fast=True)
    mac: str = ""

    @model_validator(mode="before")
    @classmethod
    def _nest_policy(cls, data: object) -> object:
        """A tag's flat record: its policy fields become `policy`."""
        if not isinstance(data, dict) or "policy" in data:
            return data
        policy = {k: v for k, v in data.items() if k in Policy.model_fields}
        return {**{k: v for k, v in data.items() if k not in Policy.model_fields}, "policy": policy}

    @model_serializer(mode="wrap")
    def _flatten_policy(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """The tag's flat record: the policy's fields beside the request's own, `mac` only when sealed."""
        data: dict[str, object] = handler(self)
        policy = data.pop("policy", None)
        flat = {**data, **(policy if isinstance(policy, dict) else {})}
        return {k: v for k, v in flat.items() if k not in _UNSET_OMITTED or v}

    def to_tag(self) -> str:
        """The request as the JSON stored in the request tag (sorted keys, ASCII: the form tags have always had)."""
        return _tag_json(self.model_dump(mode="json"))

    @classmethod
    def from_tag(cls, raw: object, *, gate: str) -> Request | str:
        """The request recorded in tag value `raw` for `gate`, or what is wrong with it (never raises: the tag is
        size-capped and checked before it is parsed)."""
        return read_record(cls, raw)

    def _digest(self, secret: str, *, root: str, gate: str) -> str:
        text = _canonical([root, gate, self.model_dump(exclude={"mac"})])
        return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()

    def sealed(self, secret: str, *, root: str, gate: str) -> Request:
        """The request with an HMAC made with `secret` for this run chain and gate, so that its time (the
        deadline) can be neither moved nor copied from another run by someone who does not hold the secret."""
        return self.model_copy(update={"mac": self._digest(secret, root=root, gate=gate)})

    def intact(self, secret: str, *, root: str, gate: str) -> bool:
        """Whether the request's HMAC matches (made for this run chain and gate by a gate holding `secret`)."""
        return bool(self.mac) and _same(self.mac, self._digest(secret, root=root, gate=gate))

    def deadlines(self) -> tuple[datetime, datetime] | None:
        """When the gate times out, and (escalating gates) when the escalation times out; None: no deadline."""
        start = _time(self.requested_at)
        if self.policy.timeout_s is None or start is None:
            return None
        try:
            timeout = timedelta(seconds=self.policy.timeout_s)
            return start + timeout, start + 2 * timeout
        except OverflowError:  # a deadline past year 9999: it never comes
            return None

    def stage(self, now: datetime) -> Stage:
        """Where the gate's deadline stands at `now`."""
        deadlines = self.deadlines()
        if deadlines is None or now < deadlines[0]:
            return "open"
        if self.policy.on_timeout == "escalate" and now < deadlines[1]:
            return "escalated"
        return "timed_out"


class Decision(BaseModel):
    """A reviewer's decision on one gate, bound to the run state it was made for: the parked run (`run_id`),
    the gate, its step path, the payload hash they saw and the state hash of the values before the gate.

    `values` holds the edited values: JSON values in a record, the keys' own types once the gate checked them.
    A record read back from an audit event carries `signature_sha256` (the SHA-256 of its signature) instead
    of the signature, so that the event log never shows a signature.
    """

    model_config = _RECORD

    verdict: Verdict
    by: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    payload_hash: str
    comment: str = ""
    values: dict[str, object] = Field(default_factory=dict)
    at: str = Field(default_factory=_now)
    run_id: str = ""
    gate: str = ""
    path: str = ""
    state_hash: str = ""
    signature: str = ""
    signature_sha256: str = ""
    identity: str = ""
    """How the reviewer's name was established (`header X-Forwarded-User`, `self-declared`); empty: not said."""

    @model_validator(mode="before")
    @classmethod
    def _record_defaults(cls, data: object, info: ValidationInfo) -> object:
        """In a record read from a tag, a null field is an absent one, and an absent time is empty."""
        if not (isinstance(data, dict) and info.context == _FROM_TAG):
            return data
        return {"at": "", **{k: v for k, v in data.items() if v is not None}}

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """The record without the binding fields it does not have (a record made before they existed)."""
        data: dict[str, object] = handler(self)
        return {k: v for k, v in data.items() if k not in _UNSET_OMITTED or v}

    def to_tag(self) -> str:
        """The record as the JSON stored in the decision tag."""
        unset = {k for k in ("signature", "signature_sha256") if not getattr(self, k)}
        return _tag_json(self.model_dump(mode="json", exclude=unset or None))

    def to_event(self) -> dict[str, object]:
        """The record as an audit event keeps it: the SHA-256 of its signature instead of the signature."""
        data: dict[str, object] = json.loads(self.to_tag())
        signature = data.pop("signature", None)
        if isinstance(signature, str):
            data["signature_sha256"] = hashlib.sha256(signature.encode()).hexdigest()
        return data


def _tag_json(data: dict[str, object]) -> str:
    """A record as tag text: compact JSON with sorted keys."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of a signature from a tag (any text) with the expected hex digest."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _signed_text(decision: Decision) -> bytes:
    d = decision
    bound = [_SIGNED_V2, d.run_id, d.gate, d.path, d.payload_hash, d.state_hash]
    identity = [d.identity] if d.identity else []  # signed only when set: earlier signatures stay valid
    return _canonical([*bound, d.verdict, d.values, d.by, d.at, d.comment, *identity])


def _digest(decision: Decision, secret: str) -> str:
    return hmac.new(secret.encode(), _signed_text(decision), hashlib.sha256).hexdigest()


def sign(decision: Decision, *, secret: str) -> Decision:
    """`decision` with its HMAC-SHA256 over (parked run, gate, step path, payload hash, state hash, verdict and
    edits, reviewer, time, comment, and how the reviewer's name was established when that is said) made with
    `secret`."""
    return decision.model_copy(update={"signature": _digest(decision, secret), "signature_sha256": ""})


def decision_record(
    *,
    verdict: str,
    by: str,
    payload_hash: str,
    comment: str = "",
    values: Mapping[str, object] | None = None,
    at: str | None = None,
    signature: str = "",
    bound: Mapping[str, str] | None = None,
    identity: str = "",
) -> Decision:
    """A new decision record (made now unless `at` is given) that its tag can hold, `bound` to the run state
    it is made for (`run_id`, `gate`, `path`, `state_hash`), saying how the reviewer's name was established
    (`identity`, when given); `ApprovalError` says what is wrong with the fields."""
    fields: dict[str, object] = {"verdict": verdict, "by": by, "payload_hash": payload_hash, "comment": comment}
    fields |= {"values": dict(values or {}), "at": at or _now(), "signature": signature, **(bound or {})}
    fields |= {"identity": identity}
    try:
        # read back from its own tag: the values are then exactly the JSON the gate verifies and signs
        decision = Decision.model_validate_json(Decision.model_validate(fields).to_tag(), context=_FROM_TAG)
    except ValidationError as exc:
        raise ApprovalError(f"malformed decision: {problems(exc)}") from None
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise ApprovalError(f"its edited values cannot be written as JSON: {exc}") from None
    return decision


def parse_decision(raw: object) -> Decision | str:
    """The decision record in tag value `raw`, or what is wrong with it (never raises: the tag is size-capped and
    checked before it is parsed)."""
    return read_record(Decision, raw, context=_FROM_TAG)


Edit = Callable[[Decision], "Decision | str"]
"""Validates a decision's edited values (the gate's decision model and key types): the typed decision or why not."""


@dataclass(frozen=True)
class Requester:
    """Who launched the run state a gate shows: `user`, the `dagster/user` tag (None: unknown) of run `run_id`,
    the oldest run of the proven chain with the same inputs."""

    run_id: str
    user: str | None


@dataclass(frozen=True, kw_only=True)
class Binding:
    """What a decision must be bound to, to count: the gate, and the runs it may have been made on (the proven
    chain's runs with the current run's inputs that were parked at the gate). The step path, payload and state
    hashes are the request's."""

    gate: str
    runs: frozenset[str]
    rejecting: frozenset[str] = frozenset()
    """Runs of the proven chain with the same inputs but not before this one (a sibling or a later re-execution)
    parked at the gate: a rejection made on one of them counts here too (a rejection anywhere is final)."""


def unknown_requester(request: Request, requester: Requester) -> str | None:
    """Why no decision counts (the requester is unknown while `requester_may_approve=False`), or None."""
    policy = request.policy
    if requester.user is not None or policy.requester_may_approve or policy.allow_unknown_requester:
        return None
    return (
        f"the requester of run {requester.run_id} is unknown (no dagster/user tag), so no decision counts while "
        "requester_may_approve=False: set ApprovalSettings(allow_unknown_requester=True) where the deployment does "
        "not set dagster/user, or requester_may_approve=True on the gate"
    )


def _binding_problem(decision: Decision, request: Request, binding: Binding) -> str | None:
    """Why `decision` is not bound to the run state the gate is in, or None."""
    d = decision
    if not d.run_id:
        return "it is bound to no run (a record made before decisions were bound to the run state); decide again"
    if d.run_id not in binding.runs and not (d.verdict == "reject" and d.run_id in binding.rejecting):
        return (
            f"it was made on run {d.run_id}, which is not this run or an earlier run of its re-execution chain "
            "with the same inputs parked at this gate"
        )
    if d.gate != binding.gate or d.path != request.path:
        return f"it was made for gate {d.gate!r} at {d.path!r}, not {binding.gate!r} at {request.path!r}"
    if d.payload_hash != request.payload_hash:
        return (
            f"it was made for payload {d.payload_hash[:12]}..., but the gate shows "
            f"{request.payload_hash[:12]}... (the shown values changed since)"
        )
    if d.state_hash != request.state_hash:
        return (
            f"it was made for run state {d.state_hash[:12]}..., but the values before the gate are now "
            f"{request.state_hash[:12]}... (an input or an earlier step's value changed since)"
        )
    return None


def _signature_problem(decision: Decision, secret: str | None) -> str | None:
    """Why the signature of `decision` does not count where signed decisions are required, or None."""
    if secret is None:
        return f"signed decisions are required, but {DECISION_SECRET_ENV} is not set where the gate runs"
    if not decision.signature and not decision.signature_sha256:
        return "it is not signed, and this deployment requires signed decisions"
    expected = _digest(decision, secret)
    if decision.signature:
        matches = _same(decision.signature, expected)
    else:
        matches = _same(decision.signature_sha256, hashlib.sha256(expected.encode()).hexdigest())
    if not matches:
        return "its signature does not match (wrong secret, or a record changed or made for another run or gate)"
    return None


def _edits_checked(
    decision: Decision, request: Request, decision_model: type[BaseModel] | None, *, validate_edits: bool
) -> Decision | str:
    """`decision` with its edits validated by the decision model (or, without it, only among the editable keys)."""
    if not decision.values:
        return decision
    if not validate_edits:  # what can be told without the decision model
        refused = sorted(set(decision.values) - set(request.editable))
        if refused:
            return f"it edits {refused}, which reviewers may not edit here (editable: {list(request.editable)})"
        return decision
    if decision_model is None:
        return "it edits values, but the gate has no decision model"
    try:
        edited = decision_model.model_validate(decision.values)
    except ValidationError as exc:
        return f"its edited values do not validate: {exc.errors(include_url=False)}"
    return decision.model_copy(update={"values": edited.model_dump(mode="python", exclude_unset=True)})


def _identity_problem(decision: Decision, request: Request, requester: Requester, *, escalated: bool) -> str | None:
    """Why the reviewer of `decision` may not decide here, or None."""
    unknown = unknown_requester(request, requester)
    if unknown is not None:
        return unknown
    allowed = request.policy.allowed(escalated=escalated)
    if allowed is not None and not _is_in(decision.by, allowed):
        return f"{decision.by!r} may not decide here (approvers: {', '.join(allowed)})"
    user = requester.user
    if not request.policy.requester_may_approve and user is not None and _is_in(decision.by, (user,)):
        return f"{decision.by!r} launched the run and may not decide on it (requester_may_approve=False)"
    return None


def check_decision(
    raw: str,
    request: Request,
    *,
    binding: Binding,
    requester: Requester,
    escalated: bool = False,
    secret: str | None = None,
    decision_model: type[BaseModel] | None = None,
    validate_edits: bool = True,
    verify_signature: bool = True,
) -> Decision | str:
    """The decision in record `raw` if it counts for the gate that made `request`, else the reason it is
    ignored (the run stays parked): malformed, bound to another run, gate, step, payload or run state, unsigned
    or badly signed where signatures are required, a reviewer not allowed, the requester approving their own
    run (or an unknown requester while `requester_may_approve=False`), or edited values the decision model
    refuses (a counted decision's `values` hold them validated; `validate_edits=False` checks only that they are
    among the request's editable keys, for those without the decision model: the sensor and the CLI;
    `verify_signature=False` leaves the signature to the gate, for those without the secret)."""
    parsed = parse_decision(raw)
    if isinstance(parsed, str):
        return f"malformed decision record: {parsed}"
    if normal_name(parsed.by) == normal_name(TIMEOUT_BY):
        return f"{TIMEOUT_BY!r} is reserved for decisions made by a deadline"
    problem = _binding_problem(parsed, request, binding)
    if problem is None and request.policy.signed and verify_signature:
        problem = _signature_problem(parsed, secret)
    if problem is None:
        problem = _identity_problem(parsed, request, requester, escalated=escalated)
    if problem is not None:
        return problem
    if parsed.verdict == "reject":
        return parsed.model_copy(update={"values": {}})  # a rejection edits nothing
    return _edits_checked(parsed, request, decision_model, validate_edits=validate_edits)


def decision_tags(tags: Mapping[str, str], gate: str) -> dict[str, str]:
    """The decision tags of `gate` among `tags`: `flujo/decision/<gate>` and `flujo/decision/<gate>/<reviewer>`."""
    return {k: v for k, v in tags.items() if decision_gate(k) == gate}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Where a gate stands: `verdict` None while it waits; `decision` the record that decided (for an approval
    with a quorum: every approver, edits merged in time order); the records that count and those ignored."""

    verdict: Verdict | None
    decision: Decision | None
    counted: tuple[Decision, ...]
    ignored: tuple[tuple[str, str], ...]
    stage: Stage
    waiting_for: str = ""


def _identity(d: Decision) -> str:
    """What makes two copies of a record the same decision (a tag copied to a resume, its audit event)."""
    return _tag_json({"r": [d.run_id, normal_name(d.by), d.at, d.verdict, d.comment, d.state_hash], "v": d.values})


def _sorted_out(
    records: Sequence[tuple[str, str]], check: Callable[[str], Decision | str], edit: Edit | None
) -> tuple[list[Decision], list[tuple[str, str]]]:
    """The decisions that count (oldest first, each once however many copies), and the records ignored with
    the reason: those that do not count, and approvals older than a record already counted from the same
    reviewer (a decision is never rolled back; a rejection always counts)."""
    counted: dict[str, Decision] = {}
    ignored: list[tuple[str, str]] = []
    for where, raw in records:
        unreadable = tag_key_problem(where)
        checked = check(raw) if unreadable is None else unreadable
        if not isinstance(checked, str) and edit is not None and checked.verdict == "approve":
            checked = edit(checked)
        if isinstance(checked, str):
            if (where, cut(checked)) not in ignored:  # a record copied from run to run is reported once
                ignored.append((where, cut(checked)))
        else:
            counted.setdefault(_identity(checked), checked)
    ordered = sorted(counted.values(), key=lambda d: d.at)
    latest = {normal_name(d.by): d.at for d in ordered}
    kept = []
    for d in ordered:
        if d.verdict == "approve" and d.at < latest[normal_name(d.by)]:
            newer = latest[normal_name(d.by)]
            ignored.append((f"the record of {d.by} at {d.at}", f"{d.by!r} recorded a later decision at {newer}"))
        else:
            kept.append(d)
    return kept, ignored


def _approvals(counted: list[Decision]) -> tuple[list[Decision], int]:
    """The largest group of approvals that made the same edits (or none), one vote per reviewer (their
    latest), and how many such groups there are: a quorum approves one content."""
    latest = list({normal_name(d.by): d for d in counted if d.verdict == "approve"}.values())
    groups: dict[str, list[Decision]] = {}
    for d in latest:
        groups.setdefault(json.dumps(d.values, sort_keys=True, default=str), []).append(d)
    return (max(groups.values(), key=len) if groups else []), len(groups)


def _merged(approvals: list[Decision], request: Request) -> Decision:
    """One approval standing for a quorum: every approver, the comments, the shared edits, the last time."""
    many = len(approvals) > 1
    return Decision(
        verdict="approve",
        by=", ".join(d.by for d in approvals),
        payload_hash=request.payload_hash,
        comment="; ".join(f"{d.by}: {d.comment}" for d in approvals if d.comment) if many else approvals[0].comment,
        values=dict(approvals[0].values),
        at=approvals[-1].at,
    )


def _by_timeout(request: Request, now: datetime) -> Decision:
    """The decision a passed deadline makes (`on_timeout`; an escalating gate rejects after its second one)."""
    on_timeout = request.policy.on_timeout
    deadlines = request.deadlines()
    assert deadlines is not None  # a gate times out only with a deadline
    passed = deadlines[1] if on_timeout == "escalate" else deadlines[0]
    return Decision(
        verdict="approve" if on_timeout == "approve" else "reject",
        by=TIMEOUT_BY,
        payload_hash=request.payload_hash,
        comment=f"no decision by the deadline {passed.isoformat(timespec='seconds')} (on_timeout={on_timeout!r})",
        # made at the deadline, not when it is read: the same decision every time (a resume key built from it,
        # which says "once per set of decisions", must not change from one sensor tick to the next)
        at=passed.isoformat(timespec="seconds"),
    )


def _waiting_for(request: Request, stage: Stage, approvals: int, groups: int) -> str:
    """What an undecided gate waits for, for a message."""
    quorum, who = request.policy.quorum, request.policy.who(escalated=stage != "open")
    if quorum == 1:
        return f"a decision by {who}"
    waiting_for = f"{quorum - approvals} more approval(s) of {quorum} by {who}"
    if groups > 1:
        waiting_for += " (approvals count together only when they make the same edits)"
    return waiting_for


def tally(
    records: Sequence[tuple[str, str]],
    request: Request,
    *,
    binding: Binding,
    requester: Requester,
    now: datetime,
    secret: str | None = None,
    decision_model: type[BaseModel] | None = None,
    validate_edits: bool = True,
    verify_signature: bool = True,
    edit: Edit | None = None,
) -> Outcome:
    """Whether the gate of `binding` is decided, from the decision `records` ((where, raw JSON) pairs: the
    tags and audit events of the runs it may count from): any counted rejection rejects; `quorum` distinct
    approvers approve; past the deadline with neither, `on_timeout` decides (an escalating gate first widens
    its approvers to `escalate_to` for one more timeout, then rejects). With an unknown requester while
    `requester_may_approve=False`, no decision counts and the gate waits for that to be settled."""
    stage = request.stage(now)
    check = partial(
        check_decision,
        request=request,
        binding=binding,
        requester=requester,
        escalated=stage != "open",
        secret=secret,
        decision_model=decision_model,
        validate_edits=validate_edits,
        verify_signature=verify_signature,
    )
    counted, ignored = _sorted_out(records, check, edit)
    outcome = partial(Outcome, counted=tuple(counted), ignored=tuple(ignored), stage=stage)
    rejections = [d for d in counted if d.verdict == "reject"]
    if rejections:
        return outcome(verdict="reject", decision=rejections[0])
    approvals, groups = _approvals(counted)
    if approvals and len(approvals) >= request.policy.quorum:
        return outcome(verdict="approve", decision=_merged(approvals, request))
    if stage == "timed_out":
        by_timeout = _by_timeout(request, now)
        return outcome(verdict=by_timeout.verdict, decision=by_timeout)
    unknown = unknown_requester(request, requester)
    waiting_for = unknown if unknown is not None else _waiting_for(request, stage, len(approvals), groups)
    return outcome(verdict=None, decision=None, waiting_for=waiting_for)
