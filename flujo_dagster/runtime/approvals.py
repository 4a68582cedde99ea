"""Approval decisions, Dagster-free: the payload hash a decision is bound to, the request a parked gate records,
the decision records kept in run tags, their signatures, and the tally that says whether a gate is approved,
rejected, timed out or still waiting (and why each record that does not count is ignored)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from flujo_dagster.dsl.approval import Approval, OnTimeout
from flujo_dagster.names import DECISION_PREFIX

__all__ = [
    "SECRET_ENV",
    "TIMEOUT_BY",
    "Decision",
    "Outcome",
    "Policy",
    "Request",
    "check_decision",
    "decision_tags",
    "parse_decision",
    "payload_hash",
    "sign",
    "tally",
]

SECRET_ENV = "FLUJO_DAGSTER_DECISION_SECRET"
"""The environment variable holding the secret that signs decisions (`require_signed_decisions`)."""
TIMEOUT_BY = "flujo (timeout)"
"""Who a decision made by a gate's deadline is recorded as."""

Verdict = Literal["approve", "reject"]


def payload_hash(shown: Mapping[str, Any]) -> str:
    """SHA-256 of the shown keys' JSON values (keys sorted): a decision counts only for exactly this content."""
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _time(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Who may decide on a gate, how many approvals it needs, its deadline and whether decisions must be signed:
    recorded with the request, so the gate, the sensor and the CLI apply the same rules."""

    approvers: tuple[str, ...] | None = None
    quorum: int = 1
    requester_may_approve: bool = False
    timeout_s: float | None = None
    on_timeout: OnTimeout = "reject"
    escalate_to: tuple[str, ...] = ()
    signed: bool = False

    @classmethod
    def of(cls, gate: Approval, *, signed: bool) -> Policy:
        """The policy of `gate`."""
        return cls(
            approvers=gate.approvers,
            quorum=gate.quorum,
            requester_may_approve=gate.requester_may_approve,
            timeout_s=gate.timeout.total_seconds() if gate.timeout is not None else None,
            on_timeout=gate.on_timeout,
            escalate_to=gate.escalate_to,
            signed=signed,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        """The policy recorded in a request (a field that does not parse keeps its default: the gate, which
        knows its own policy, decides anyway)."""
        approvers, escalate_to = data.get("approvers"), data.get("escalate_to")
        on_timeout = data.get("on_timeout", "reject")
        quorum, timeout_s = data.get("quorum", 1), data.get("timeout_s")
        return cls(
            approvers=tuple(str(a) for a in approvers) if isinstance(approvers, list) else None,
            quorum=quorum if isinstance(quorum, int) else 1,
            requester_may_approve=data.get("requester_may_approve") is True,
            timeout_s=float(timeout_s) if isinstance(timeout_s, int | float) else None,
            on_timeout=on_timeout if on_timeout in ("reject", "approve", "escalate") else "reject",
            escalate_to=tuple(str(a) for a in escalate_to) if isinstance(escalate_to, list) else (),
            signed=data.get("signed") is True,
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


@dataclass(frozen=True, kw_only=True)
class Request:
    """What a parked gate waits for: its step path, the payload hash of what it shows, its policy, and when it
    first asked (for this content; the deadline runs from then)."""

    path: str
    payload_hash: str
    show: tuple[str, ...]
    policy: Policy
    requested_at: str = field(default_factory=_now)
    preview: str = ""
    editable: tuple[str, ...] = ()
    mac: str = ""

    def _data(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "payload_hash": self.payload_hash,
            "show": list(self.show),
            "requested_at": self.requested_at,
            "preview": self.preview,
            "editable": list(self.editable),
            **asdict(self.policy),
        }

    def to_tag(self) -> str:
        """The request as the JSON stored in the request tag."""
        data = {**self._data(), **({"mac": self.mac} if self.mac else {})}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def _digest(self, secret: str, *, root: str, gate: str) -> str:
        text = json.dumps([root, gate, self._data()], sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()

    def sealed(self, secret: str, *, root: str, gate: str) -> Request:
        """The request with an HMAC made with `secret` for this run chain and gate, so that its time (the
        deadline) can be neither moved nor copied from another run by someone who does not hold the secret."""
        return replace(self, mac=self._digest(secret, root=root, gate=gate))

    def intact(self, secret: str, *, root: str, gate: str) -> bool:
        """Whether the request's HMAC matches (made for this run chain and gate by a gate holding `secret`)."""
        return bool(self.mac) and _same(self.mac, self._digest(secret, root=root, gate=gate))

    @classmethod
    def from_tag(cls, raw: str, *, gate: str) -> Request:
        """The request recorded in tag value `raw` for `gate` (an unreadable one is treated as just made)."""
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        return cls(
            path=str(data.get("path", gate)),
            payload_hash=str(data.get("payload_hash", "")),
            show=tuple(data.get("show") or ()),
            policy=Policy.from_json(data),
            requested_at=str(data.get("requested_at") or _now()),
            preview=str(data.get("preview") or ""),
            editable=tuple(str(k) for k in data.get("editable") or () if isinstance(data.get("editable"), list)),
            mac=str(data.get("mac") or ""),
        )

    def deadlines(self) -> tuple[datetime, datetime] | None:
        """When the gate times out, and (escalating gates) when the escalation times out; None: no deadline."""
        start = _time(self.requested_at)
        if self.policy.timeout_s is None or start is None:
            return None
        timeout = timedelta(seconds=self.policy.timeout_s)
        return start + timeout, start + 2 * timeout

    def stage(self, now: datetime) -> Literal["open", "escalated", "timed_out"]:
        """Where the gate's deadline stands at `now`."""
        deadlines = self.deadlines()
        if deadlines is None or now < deadlines[0]:
            return "open"
        if self.policy.on_timeout == "escalate" and now < deadlines[1]:
            return "escalated"
        return "timed_out"


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A reviewer's decision on one gate, bound to the payload hash they saw (and, signed, to the run chain)."""

    verdict: Verdict
    by: str
    payload_hash: str
    comment: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=_now)
    signature: str = ""

    def to_tag(self) -> str:
        """The record as the JSON stored in the decision tag."""
        data = asdict(self)
        if not self.signature:
            del data["signature"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of a signature from a tag (any text) with the expected hex digest."""
    return hmac.compare_digest(given.encode(), expected.encode())


def _signed_text(decision: Decision, *, root: str, gate: str) -> bytes:
    fields = [root, gate, decision.payload_hash, decision.verdict, decision.values, decision.by, decision.at]
    return json.dumps([*fields, decision.comment], sort_keys=True, separators=(",", ":")).encode()


def sign(decision: Decision, *, secret: str, root: str, gate: str) -> Decision:
    """`decision` with its HMAC-SHA256 over (run chain, gate, payload hash, verdict and edits, reviewer, time,
    comment) made with `secret`."""
    text = _signed_text(decision, root=root, gate=gate)
    return replace(decision, signature=hmac.new(secret.encode(), text, hashlib.sha256).hexdigest())


def parse_decision(raw: str) -> Decision | str:
    """The decision record in tag value `raw`, or what is wrong with it."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg} at {exc.pos})"
    if not isinstance(data, dict):
        return "not a JSON object"
    verdict, by, digest = data.get("verdict"), data.get("by"), data.get("payload_hash")
    if verdict not in ("approve", "reject"):
        return f"verdict must be 'approve' or 'reject', got {verdict!r}"
    if not isinstance(by, str) or not by.strip():
        return "no reviewer name ('by')"
    if not isinstance(digest, str):
        return "no payload_hash"
    values = data.get("values") or {}
    if not isinstance(values, dict):
        return "values must be a JSON object"
    return Decision(
        verdict=verdict,
        by=by.strip(),
        payload_hash=digest,
        comment=str(data.get("comment") or ""),
        values=values,
        at=str(data.get("at") or ""),
        signature=str(data.get("signature") or ""),
    )


Edit = Callable[[Decision], "Decision | str"]
"""Validates a decision's edited values (the gate's decision model and key types): the typed decision or why not."""


def check_decision(
    raw: str,
    request: Request,
    *,
    requester: str | None,
    escalated: bool = False,
    secret: str | None = None,
    root: str = "",
    gate: str = "",
    decision_model: type[BaseModel] | None = None,
    validate_edits: bool = True,
    verify_signature: bool = True,
) -> Decision | str:
    """The decision in tag value `raw` if it counts for the gate that made `request`, else the reason it is
    ignored (the run stays parked): malformed, another payload, unsigned or badly signed where signatures are
    required, a reviewer not allowed, the requester approving their own run, or edited values the decision
    model refuses (a counted decision's `values` hold them validated; `validate_edits=False` checks only that
    they are among the request's editable keys, for those without the decision model: the sensor and the CLI;
    `verify_signature=False` leaves the signature to the gate, for those without the secret)."""
    parsed = parse_decision(raw)
    if isinstance(parsed, str):
        return f"malformed decision record: {parsed}"
    if parsed.by == TIMEOUT_BY:
        return f"{TIMEOUT_BY!r} is reserved for decisions made by a deadline"
    if parsed.payload_hash != request.payload_hash:
        return (
            f"it was made for payload {parsed.payload_hash[:12]}..., but the gate shows "
            f"{request.payload_hash[:12]}... (the shown values changed since)"
        )
    if request.policy.signed and verify_signature:
        if secret is None:
            return f"signed decisions are required, but {SECRET_ENV} is not set where the gate runs"
        if not parsed.signature:
            return "it is not signed, and this deployment requires signed decisions"
        expected = sign(parsed, secret=secret, root=root, gate=gate).signature
        if not _same(parsed.signature, expected):
            return "its signature does not match (wrong secret, or a record changed or made for another run or gate)"
    allowed = request.policy.allowed(escalated=escalated)
    if allowed is not None and parsed.by not in allowed:
        return f"{parsed.by!r} may not decide here (approvers: {', '.join(allowed)})"
    if not request.policy.requester_may_approve and requester is not None and parsed.by == requester:
        return f"{parsed.by!r} launched the run and may not decide on it (requester_may_approve=False)"
    if parsed.verdict == "reject":
        return replace(parsed, values={})  # a rejection edits nothing
    if parsed.values and not validate_edits:  # what can be told without the decision model
        refused = sorted(set(parsed.values) - set(request.editable))
        if refused:
            return f"it edits {refused}, which reviewers may not edit here (editable: {list(request.editable)})"
    if parsed.values and validate_edits:
        if decision_model is None:
            return "it edits values, but the gate has no decision model"
        try:
            edited = decision_model.model_validate(parsed.values)
        except ValidationError as exc:
            return f"its edited values do not validate: {exc.errors(include_url=False)}"
        return replace(parsed, values=edited.model_dump(mode="python", exclude_unset=True))
    return parsed


def decision_tags(tags: Mapping[str, str], gate: str) -> dict[str, str]:
    """The decision tags of `gate` among `tags`: `flujo/decision/<gate>` and `flujo/decision/<gate>/<reviewer>`."""
    own = DECISION_PREFIX + gate
    return {k: v for k, v in tags.items() if k == own or k.startswith(own + "/")}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Where a gate stands: `verdict` None while it waits; `decision` the record that decided (for an approval
    with a quorum: every approver, edits merged in time order); the records that count and those ignored."""

    verdict: Verdict | None
    decision: Decision | None
    counted: tuple[Decision, ...]
    ignored: tuple[tuple[str, str], ...]
    stage: Literal["open", "escalated", "timed_out"]
    waiting_for: str = ""


def tally(
    tags: Mapping[str, str],
    gate: str,
    request: Request,
    *,
    requester: str | None,
    now: datetime,
    secret: str | None = None,
    root: str = "",
    decision_model: type[BaseModel] | None = None,
    validate_edits: bool = True,
    verify_signature: bool = True,
    edit: Edit | None = None,
) -> Outcome:
    """Whether `gate` is decided, from the decision tags among `tags`: any counted rejection rejects; `quorum`
    distinct approvers approve; past the deadline with neither, `on_timeout` decides (an escalating gate first
    widens its approvers to `escalate_to` for one more timeout, then rejects)."""
    stage = request.stage(now)
    counted: list[Decision] = []
    ignored: list[tuple[str, str]] = []
    for key, raw in sorted(decision_tags(tags, gate).items()):
        checked = check_decision(
            raw,
            request,
            requester=requester,
            escalated=stage != "open",
            secret=secret,
            root=root,
            gate=gate,
            decision_model=decision_model,
            validate_edits=validate_edits,
            verify_signature=verify_signature,
        )
        if not isinstance(checked, str) and edit is not None and checked.verdict == "approve":
            checked = edit(checked)
        if isinstance(checked, str):
            ignored.append((key, checked))
        else:
            counted.append(checked)
    counted.sort(key=lambda d: d.at)
    rejections = [d for d in counted if d.verdict == "reject"]
    if rejections:
        return Outcome(
            verdict="reject", decision=rejections[0], counted=tuple(counted), ignored=tuple(ignored), stage=stage
        )
    latest = list({d.by: d for d in counted}.values())  # one vote per reviewer: their latest
    # a quorum approves one content: the approvals that made the same edits (or none) count together
    groups: dict[str, list[Decision]] = {}
    for d in latest:
        groups.setdefault(json.dumps(d.values, sort_keys=True, default=str), []).append(d)
    approvals = max(groups.values(), key=len) if groups else []
    if latest and len(approvals) >= request.policy.quorum:
        values = dict(approvals[0].values)
        merged = Decision(
            verdict="approve",
            by=", ".join(d.by for d in approvals),
            payload_hash=request.payload_hash,
            comment="; ".join(f"{d.by}: {d.comment}" for d in approvals if d.comment)
            if len(approvals) > 1
            else approvals[0].comment,
            values=values,
            at=approvals[-1].at,
        )
        return Outcome(verdict="approve", decision=merged, counted=tuple(counted), ignored=tuple(ignored), stage=stage)
    if stage == "timed_out":
        verdict: Verdict = "approve" if request.policy.on_timeout == "approve" else "reject"
        deadlines = request.deadlines()
        assert deadlines is not None
        passed = deadlines[1] if request.policy.on_timeout == "escalate" else deadlines[0]
        by_timeout = Decision(
            verdict=verdict,
            by=TIMEOUT_BY,
            payload_hash=request.payload_hash,
            comment=f"no decision by the deadline {passed.isoformat(timespec='seconds')} (on_timeout="
            f"{request.policy.on_timeout!r})",
            at=now.isoformat(timespec="seconds"),
        )
        return Outcome(
            verdict=verdict, decision=by_timeout, counted=tuple(counted), ignored=tuple(ignored), stage=stage
        )
    missing = request.policy.quorum - len(approvals)
    who = request.policy.who(escalated=stage != "open")
    if request.policy.quorum == 1:
        waiting_for = f"a decision by {who}"
    else:
        waiting_for = f"{missing} more approval(s) of {request.policy.quorum} by {who}"
        if len(groups) > 1:
            waiting_for += " (approvals count together only when they make the same edits)"
    return Outcome(
        verdict=None,
        decision=None,
        counted=tuple(counted),
        ignored=tuple(ignored),
        stage=stage,
        waiting_for=waiting_for,
    )
