"""Approval decisions, Dagster-free: the payload hash a decision is bound to, the decision record kept in a run
tag, and the checks that make a decision count (or say why it is ignored)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from flujo_dagster.dsl.approval import Approval

__all__ = [
    "AWAITING_PREFIX",
    "DECISION_PREFIX",
    "REQUEST_PREFIX",
    "Decision",
    "check_decision",
    "parse_decision",
    "payload_hash",
]

DECISION_PREFIX = "flujo/decision/"
"""Run tag `flujo/decision/<gate>`: the decision record (JSON) for gate `<gate>` (its op's node name)."""
AWAITING_PREFIX = "flujo/awaiting/"
"""Run tag `flujo/awaiting/<gate>`: `pending` while the run is parked at the gate, `resumed` once resumed."""
REQUEST_PREFIX = "flujo/request/"
"""Run tag `flujo/request/<gate>`: the request (step path, payload hash, who may approve) of a parked gate."""

Verdict = Literal["approve", "reject"]


def payload_hash(shown: Mapping[str, Any]) -> str:
    """SHA-256 of the shown keys' JSON values (keys sorted): a decision counts only for exactly this content."""
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A reviewer's decision on one gate, bound to the payload hash they saw."""

    verdict: Verdict
    by: str
    payload_hash: str
    comment: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_tag(self) -> str:
        """The record as the JSON stored in the decision tag."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


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
    )


def check_decision(raw: str, gate: Approval, *, expected_hash: str, requester: str | None) -> Decision | str:
    """The decision in tag value `raw` if it counts for `gate` showing content `expected_hash`, else the reason it
    is ignored (the run stays parked): malformed, another payload, a reviewer not allowed, the requester
    approving their own run, or edited values the decision model refuses (then `values` holds them validated)."""
    parsed = parse_decision(raw)
    if isinstance(parsed, str):
        return f"malformed decision record: {parsed}"
    if parsed.payload_hash != expected_hash:
        return (
            f"it was made for payload {parsed.payload_hash[:12]}..., but the gate shows {expected_hash[:12]}... "
            "(the shown values changed since)"
        )
    if gate.approvers is not None and parsed.by not in gate.approvers:
        return f"{parsed.by!r} may not decide here (approvers: {', '.join(gate.approvers)})"
    if not gate.requester_may_approve and requester is not None and parsed.by == requester:
        return f"{parsed.by!r} launched the run and may not decide on it (requester_may_approve=False)"
    if parsed.values and parsed.verdict == "approve":
        if gate.decision is None:
            return "it edits values, but the gate has no decision model"
        try:
            edited = gate.decision.model_validate(parsed.values)
        except ValidationError as exc:
            return f"its edited values do not validate: {exc.errors(include_url=False)}"
        dumped = edited.model_dump(mode="python", exclude_unset=True)
        return Decision(
            verdict=parsed.verdict,
            by=parsed.by,
            payload_hash=parsed.payload_hash,
            comment=parsed.comment,
            values=dumped,
            at=parsed.at,
        )
    return parsed
