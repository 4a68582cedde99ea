"""The approval policy, request and decision records: frozen pydantic models whose tags keep the format parked
runs already hold, whose HMACs cover the same fields over the same canonical bytes, and whose bad input is a
clear reason (the record is ignored) or an `ApprovalError`, never a raw exception."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from pydantic import ValidationError

from flujo_dagster import ApprovalError
from flujo_dagster.runtime.approvals import (
    Binding,
    Decision,
    Policy,
    Request,
    Requester,
    check_decision,
    decision_record,
    parse_decision,
    sign,
    tally,
)

SECRET, ROOT, GATE = "s3cret", "run-1", "check"
HASH, STATE = "ab" * 32, "ef" * 32
# Written by the hand-written JSON code these models replace (keys sorted, non-ASCII escaped), as parked runs and
# recorded decisions hold them; the MAC and the signature were made by that code with SECRET, ROOT and GATE.
LEGACY_REQUEST = (
    '{"approvers":["ana","b\\u00e9"],"editable":["draft"],"escalate_to":["lead"],'
    '"mac":"cd4e544aadab81edf5c9d48d6e0cf0e002c18ed853e8bc4a970636221d604b6d","on_timeout":"escalate",'
    f'"path":"review > approval:check","payload_hash":"{HASH}","preview":"draft: Otters \\u00e9","quorum":2,'
    '"requested_at":"2026-03-01T09:00:00.000+00:00","requester_may_approve":false,"show":["draft"],"signed":true,'
    '"timeout_s":60.0}'
)
LEGACY_DECISION = (
    '{"at":"2026-03-01T09:05:00.000+00:00","by":"ana","comment":"fine \\u00fc",'
    f'"payload_hash":"{HASH}","signature":"f68a7635df0cb5fadc2e0d04ff7abef010fe8b48abbdfbc6b6cd48434c8970c6",'
    '"values":{"draft":"Better otters","n":[1,2.5]},"verdict":"approve"}'
)
POLICY = Policy(
    approvers=("ana", "bé"), quorum=2, timeout_s=60.0, on_timeout="escalate", escalate_to=("lead",), signed=True
)
REQUEST = Request(
    path="review > approval:check",
    payload_hash=HASH,
    show=("draft",),
    policy=POLICY,
    requested_at="2026-03-01T09:00:00.000+00:00",
    preview="draft: Otters é",
    editable=("draft",),
)
BINDING = Binding(gate=GATE, runs=frozenset({ROOT}))
KNOWN = Requester(run_id=ROOT, user="requester")


def _hmac(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(SECRET.encode(), text, hashlib.sha256).hexdigest()


def test_a_legacy_request_tag_reads_back_sealed_and_intact() -> None:
    request = Request.from_tag(LEGACY_REQUEST, gate=GATE)
    assert request == REQUEST.sealed(SECRET, root=ROOT, gate=GATE)
    assert request.intact(SECRET, root=ROOT, gate=GATE)
    assert not request.intact("guess", root=ROOT, gate=GATE)
    assert not request.intact(SECRET, root="another-run", gate=GATE)
    moved = request.model_copy(update={"requested_at": "2026-03-02T09:00:00.000+00:00"})
    assert not moved.intact(SECRET, root=ROOT, gate=GATE)  # the deadline cannot be moved


def test_the_request_tag_is_flat_and_its_mac_covers_every_field_but_itself() -> None:
    unsealed = json.loads(REQUEST.to_tag())
    assert "mac" not in unsealed and "policy" not in unsealed
    assert unsealed == {k: v for k, v in json.loads(LEGACY_REQUEST).items() if k != "mac"}
    sealed = REQUEST.sealed(SECRET, root=ROOT, gate=GATE)
    assert json.loads(sealed.to_tag()) == json.loads(LEGACY_REQUEST)
    assert sealed.mac == _hmac([ROOT, GATE, unsealed])
    assert Request.from_tag(sealed.to_tag(), gate=GATE) == sealed


def test_a_legacy_decision_tag_reads_back_but_counts_nowhere() -> None:
    """A record signed before decisions were bound to the run state reads back as it was written, and is
    ignored: it names no run, and its signature is not over the fields signatures now cover."""
    decision = parse_decision(LEGACY_DECISION)
    assert isinstance(decision, Decision)
    assert (decision.by, decision.comment, decision.values) == (
        "ana",
        "fine ü",
        {"draft": "Better otters", "n": [1, 2.5]},
    )
    assert json.loads(decision.to_tag()) == json.loads(LEGACY_DECISION)
    editable = REQUEST.model_copy(update={"editable": ("draft", "n")})
    check = partial(check_decision, request=editable, binding=BINDING, requester=KNOWN, secret=SECRET)
    assert check(LEGACY_DECISION, validate_edits=False) == (
        "it is bound to no run (a record made before decisions were bound to the run state); decide again"
    )
    rebound = decision.model_copy(update={"run_id": ROOT, "gate": GATE, "path": REQUEST.path})
    assert check(rebound.to_tag(), validate_edits=False) == (
        "its signature does not match (wrong secret, or a record changed or made for another run or gate)"
    )


def test_a_signature_covers_the_run_state_and_every_field_of_the_decision() -> None:
    unsigned = decision_record(
        verdict="approve",
        by="ana",
        payload_hash=HASH,
        comment="fine ü",
        values={"draft": "Better otters"},
        at="2026-03-01T09:05:00.000+00:00",
        bound={"run_id": ROOT, "gate": GATE, "path": REQUEST.path, "state_hash": STATE},
    )
    signed = sign(unsigned, secret=SECRET)
    fields = ["flujo-decision/2", ROOT, GATE, REQUEST.path, HASH, STATE, "approve", {"draft": "Better otters"}]
    assert signed.signature == _hmac([*fields, "ana", "2026-03-01T09:05:00.000+00:00", "fine ü"])
    stated = REQUEST.model_copy(update={"state_hash": STATE})
    check = partial(check_decision, request=stated, binding=BINDING, requester=KNOWN, secret=SECRET)
    assert check(signed.to_tag(), validate_edits=False) == signed
    # the audit event keeps the signature's SHA-256 only, and the record still verifies from it
    event = signed.to_event()
    assert (
        "signature" not in event and event["signature_sha256"] == hashlib.sha256(signed.signature.encode()).hexdigest()
    )
    assert check(json.dumps(event), validate_edits=False) == Decision.model_validate(event)
    for field, value in [("run_id", "other-run"), ("gate", "other"), ("state_hash", "cd" * 32), ("by", "bo")]:
        changed = signed.model_copy(update={field: value})
        if field in ("run_id", "gate"):  # the gate sees it as made elsewhere, whatever its signature
            assert check(changed.to_tag(), validate_edits=False) != signed
        else:
            assert isinstance(check(changed.to_tag(), validate_edits=False), str)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "not JSON (EOF while parsing a value at line 1 column 0)"),
        ("[1]", "not a JSON object"),
        (
            '{"verdict":"maybe","by":"ana","payload_hash":"x"}',
            "verdict: input should be 'approve' or 'reject', got 'maybe'",
        ),
        ('{"verdict":"approve","by":"  ","payload_hash":"x"}', "by: string should have at least 1 character, got '  '"),
        ('{"verdict":"approve","by":"ana"}', "payload_hash: missing"),
        (
            '{"verdict":"approve","by":"ana","payload_hash":"x","values":[1]}',
            "values: input should be an object, got [1]",
        ),
        ('{"verdict":"approve","by":7,"payload_hash":"x"}', "by: input should be a valid string, got 7"),
        ("[" * 5000 + "]" * 5000, "not JSON (recursion limit exceeded at line 1 column 202)"),
        ('{"verdict":"approve","values":' + '{"a":' * 3000 + "1" + "}" * 3001, "not JSON (recursion limit exceeded"),
    ],
)
def test_a_malformed_decision_is_ignored_with_what_is_wrong(raw: str, reason: str) -> None:
    parsed = parse_decision(raw)
    assert isinstance(parsed, str) and parsed.startswith(reason)
    checked = check_decision(
        raw, REQUEST, binding=BINDING, requester=KNOWN, validate_edits=False, verify_signature=False
    )
    assert checked == f"malformed decision record: {parsed}"


def test_a_decision_record_without_time_or_with_nulls_reads_as_before() -> None:
    parsed = parse_decision('{"verdict":"approve","by":" ana ","payload_hash":"x","values":null,"comment":null}')
    assert isinstance(parsed, Decision)
    assert (parsed.by, parsed.at, parsed.values, parsed.comment, parsed.signature) == ("ana", "", {}, "", "")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("garbage", "not JSON (expected value at line 1 column 1)"),
        ("[]", "not a JSON object"),
        ('{"path": 5}', "path: input should be a valid string, got 5"),
        ("[" * 5000, "not JSON (recursion limit exceeded at line 1 column 202)"),
        ('{"show": 5}', "path: missing; payload_hash: missing; show: input should be a valid array, got 5"),
        (LEGACY_REQUEST.replace('"quorum":2', '"quorum":0'), "policy.quorum: input should be greater than or equal"),
        (LEGACY_REQUEST.replace('"quorum":2', '"quorum":' + "9" * 5000), "not JSON (number out of range"),
        (LEGACY_REQUEST.replace('"approvers":["ana","b\\u00e9"]', '"approvers":"ana"'), "policy.approvers: input"),
        (LEGACY_REQUEST.replace("review", "\\udc80"), "not JSON (lone leading surrogate in hex escape"),
        (LEGACY_REQUEST.replace("review", "\udc80"), "not UTF-8 text (it holds a lone surrogate)"),
        ('{"preview":"' + "x" * 70_000 + '"}', "70014 characters, over the 65536 a record tag may hold"),
    ],
)
def test_an_unreadable_request_tag_is_a_reason_never_a_request(raw: str, reason: str) -> None:
    """A request that cannot be read is never mistaken for one (with no approvers, no payload hash): its gate is
    reported as not readable, and no decision counts for it."""
    request = Request.from_tag(raw, gate=GATE)
    assert isinstance(request, str) and request.startswith(reason), request


def test_records_are_frozen_and_bad_fields_are_approval_errors() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        REQUEST.path = "elsewhere"
    with pytest.raises(ApprovalError, match="malformed decision: by: string should have at least 1 character"):
        decision_record(verdict="approve", by=" ", payload_hash=HASH)
    with pytest.raises(ApprovalError, match="malformed decision: verdict: input should be 'approve' or 'reject'"):
        decision_record(verdict="maybe", by="ana", payload_hash=HASH)
    with pytest.raises(ApprovalError, match="its edited values cannot be written as JSON"):
        decision_record(verdict="approve", by="ana", payload_hash=HASH, values={"draft": object()})
    made = decision_record(verdict="approve", by=" ana ", payload_hash=HASH, values={"draft": "x"})
    assert made.by == "ana" and made.at and parse_decision(made.to_tag()) == made


def test_tags_are_written_byte_for_byte_as_parked_runs_hold_them() -> None:
    assert REQUEST.sealed(SECRET, root=ROOT, gate=GATE).to_tag() == LEGACY_REQUEST
    assert Decision.model_validate_json(LEGACY_DECISION).to_tag() == LEGACY_DECISION


@pytest.mark.parametrize(
    "field",
    ['"timeout_s":1e300', '"timeout_s":NaN', '"timeout_s":Infinity', '"timeout_s":-5'],
)
def test_a_request_tag_with_an_impossible_timeout_has_no_deadline_and_never_raises(field: str) -> None:
    raw = LEGACY_REQUEST.replace('"timeout_s":60.0', field)
    request = Request.from_tag(raw, gate=GATE)
    if isinstance(request, str):  # refused by the record's model: the gate is not readable
        assert request.startswith("policy.timeout_s: input should be")
    else:  # a finite timeout too long for the calendar: no deadline ever comes
        assert field == '"timeout_s":1e300' and request.deadlines() is None
        assert request.stage(datetime.now(UTC)) == "open"


def test_a_deadline_past_year_9999_never_comes_and_never_raises() -> None:
    day = POLICY.model_copy(update={"timeout_s": 86_400.0})
    far = REQUEST.model_copy(update={"requested_at": "9999-12-31T23:00:00.000+00:00", "policy": day})
    assert far.deadlines() is None
    assert far.stage(datetime.now(UTC)) == "open"


def test_a_decision_record_holds_its_values_as_the_json_the_gate_verifies() -> None:
    decision = decision_record(verdict="approve", by="ana", payload_hash=HASH, values={"tags": {"b"}, "n": 2})
    assert decision.values == {"tags": ["b"], "n": 2}
    signed = sign(decision, secret=SECRET)  # json.dumps of a set would raise TypeError here
    assert signed.signature and Decision.model_validate_json(signed.to_tag()) == signed


def test_a_deadline_decides_the_same_decision_whenever_it_is_read() -> None:
    """The decision a passed deadline makes is dated at the deadline, not when a tick reads it: two sensor ticks a
    second apart see the same decision (and so the same resume key: reported and resumed once)."""
    request = REQUEST.model_copy(update={"policy": POLICY.model_copy(update={"on_timeout": "reject", "signed": False})})
    deadline = datetime.fromisoformat(request.requested_at) + timedelta(seconds=60)
    seen = [
        tally([], request, binding=BINDING, requester=KNOWN, now=deadline + timedelta(seconds=s)).decision
        for s in (1, 2, 3600)
    ]
    assert seen[0] is not None and seen[0] == seen[1] == seen[2]
    assert (seen[0].verdict, seen[0].by, seen[0].at) == (
        "reject",
        "flujo (timeout)",
        deadline.isoformat(timespec="seconds"),
    )
