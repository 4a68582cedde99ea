"""Malformed approval tags never jam: one run whose request, decision or bookkeeping tag holds anything (not JSON,
JSON nested 100000 deep, a 5000-digit integer, `1e400`, a megabyte, an escaped lone surrogate, an array, every
field of the wrong type) is reported with what is wrong, and a healthy parked run in the same instance is still
listed by `pending` and resumed. Every tag reader is a total function (hypothesis feeds them arbitrary text),
and an ignored record is audited once, not again when another tag is added."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, build_sensor_context
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flujo_dagster import audit_trail
from flujo_dagster.adapter.control.approvals import _each_run, decide, escalate_due, pending, resumable, resume_plan
from flujo_dagster.adapter.control.audit import _remembered
from flujo_dagster.adapter.control.sensors import approvals_sensor
from flujo_dagster.names import AWAITING_PREFIX, DECISION_PREFIX, REQUEST_PREFIX
from flujo_dagster.runtime.approvals import (
    Binding,
    Decision,
    Policy,
    Request,
    Requester,
    check_decision,
    parse_decision,
    tally,
)
from flujo_dagster.runtime.tags import MAX_REASON_CHARS, MAX_RECORD_TAG_CHARS, cut, read_record
from tests.approval_defs import REQUEST_LOG, defs, gated_job
from tests.test_approvals import INPUTS, park
from tests.test_approvals_webserver import LAUNCH, LOCATIONS, served, wait_done  # noqa: F401  (served: a fixture)
from tests.test_cli import run as run_cli
from tests.test_webserver import Webserver

NESTED = "[" * 100_000
BIG_INT = "9" * 5000
WRONG_TYPES = json.dumps(
    {
        "path": 1,
        "payload_hash": [],
        "show": "draft",
        "approvers": 3,
        "quorum": "two",
        "timeout_s": "soon",
        "on_timeout": 4,
        "requested_at": {},
        "preview": None,
        "editable": 5,
        "signed": "yes",
        "verdict": 1,
        "by": [],
        "values": "x",
        "at": 2,
        "comment": {},
        "signature": 3,
    }
)


@pytest.fixture
def requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    yield log


def _request_with(instance: DagsterInstance, run_id: str, field: str) -> str:
    """The run's own request tag with `field` (raw JSON text) put in place of its timeout."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    raw = run.tags[REQUEST_PREFIX + "review"]
    assert '"timeout_s":null' in raw
    return raw.replace('"timeout_s":null', field)


# (tag key, value, or None for one made from the run's own request; the reason `pending` reports, or "" when the
# request stays readable and the malformed tag is only ignored)
REQUEST_CASES = {
    "show_5": ('{"show": 5}', "path: missing; payload_hash: missing; show: input should be a valid array, got 5"),
    "nested": (NESTED, "100000 characters, over the 65536 a record tag may hold"),
    "nested_within_the_cap": ('{"path":' + "[" * 60_000, "not JSON (recursion limit exceeded at line 1 column 209)"),
    "timeout_1e400": ('"timeout_s":1e400', "policy.timeout_s: input should be a finite number"),
    "timeout_huge_int": (f'"timeout_s":{BIG_INT}', "not JSON (number out of range"),
    "quorum_huge_int": (f'"quorum":{BIG_INT},"timeout_s":null', "not JSON (number out of range"),
    "quorum_0": ('"quorum":0,"timeout_s":null', "policy.quorum: input should be greater than or equal to 1"),
    "huge_string": ('{"preview":"' + "x" * 1_000_000 + '"}', "1000014 characters, over the 65536 a record tag"),
    "escaped_surrogate": ('{"path":"\\udc80"}', "not JSON (lone leading surrogate in hex escape"),
    "array": ("[1, 2]", "not a JSON object"),
    "wrong_types": (WRONG_TYPES, "path: input should be a valid string, got 1; payload_hash: input should be"),
    "empty": ("", "not JSON (EOF while parsing a value at line 1 column 0)"),
}
DECISION_CASES = {
    "show_5": '{"show": 5}',
    "nested": NESTED,
    "nested_within_the_cap": "{" * 60_000,
    "nested_values": '{"verdict":"approve","by":"eve","payload_hash":"x","values":{"a":' + NESTED + "}}",
    "huge_int_by": '{"verdict":"approve","by":' + BIG_INT + ',"payload_hash":"x"}',
    "huge_float": '{"verdict":"approve","by":"eve","payload_hash":1e400}',
    "huge_string": '{"verdict":"approve","by":"' + "e" * 1_000_000 + '","payload_hash":"x"}',
    "escaped_surrogate": '{"verdict":"approve","by":"\\udc80","payload_hash":"x"}',
    "array": "[1, 2]",
    "wrong_types": WRONG_TYPES,
}
OTHER_TAGS = {
    "resume_key": ("flujo/resume_key", NESTED),
    "escalated": ("flujo/escalated/review", NESTED),
    "ignored_memory": ("flujo/ignored/review", "x" * 1_000_000),
    "awaiting_overlong_gate": (AWAITING_PREFIX + "g" * 2000, "pending"),
    "awaiting_without_request": (AWAITING_PREFIX + "ghost", "pending"),
    "decision_for_overlong_gate": (DECISION_PREFIX + "g" * 3000 + "/eve", '{"show": 5}'),
    "decision_without_reviewer": (DECISION_PREFIX + "review", NESTED),
}


def _two_parked(instance: DagsterInstance) -> tuple[str, str]:
    """A healthy parked run with an approval (the sensor would resume it), and another parked run."""
    healthy, other = park(gated_job, instance), park(gated_job, instance)
    decide(healthy, verdict="approve", by="ana", instance=instance)
    return healthy, other


def _still_handled(instance: DagsterInstance, healthy: str) -> list[str]:
    """Check that `pending`, `escalate_due` and `resumable` handle the healthy run; the problems reported."""
    reported: list[str] = []
    listed = {(p.run_id, p.gate): p for p in pending(instance=instance, report=reported.append)}
    assert listed[(healthy, "review")].path == "gated > approval:review" and not listed[(healthy, "review")].problem
    assert escalate_due(instance, report=reported.append) == []
    assert [p.run_id for p in resumable(instance, report=reported.append)] == [healthy]
    return reported


@pytest.mark.parametrize("case", list(REQUEST_CASES))
def test_a_malformed_request_tag_is_reported_and_never_jams_another_run(
    instance: DagsterInstance, requests: Path, case: str
) -> None:
    healthy, bad = _two_parked(instance)
    decide(bad, verdict="approve", by="ana", instance=instance)  # a decision that would count for its request
    value, reason = REQUEST_CASES[case]
    tag = _request_with(instance, bad, value) if value.startswith('"') else value
    instance.add_run_tags(bad, {REQUEST_PREFIX + "review": tag})

    reported = _still_handled(instance, healthy)
    (listed,) = [p for p in pending(instance=instance) if p.run_id == bad]
    assert listed.problem.startswith(
        f"gate review of run {bad} cannot be decided: its request cannot be read (tag flujo/request/review: {reason}"
    ), listed.problem
    assert (listed.path, listed.payload_hash, listed.approvers) == ("", "", ())  # nothing made up
    # never treated as decided, even with a decision that counted before; told once, in the audit trail and the log
    assert [r for r in reported if bad in r] == [listed.problem]
    assert [e.message for e in audit_trail(bad, instance=instance) if e.kind == "ignored"] == [
        f"tag flujo/request/review: {listed.problem}"
    ]
    assert resumable(instance, report=reported.append) and len(reported) == 1  # the next tick tells nothing new


@pytest.mark.parametrize("case", list(DECISION_CASES))
def test_a_malformed_decision_tag_is_ignored_with_its_reason_and_never_jams_another_run(
    instance: DagsterInstance, requests: Path, case: str
) -> None:
    healthy, bad = _two_parked(instance)
    instance.add_run_tags(bad, {DECISION_PREFIX + "review/eve": DECISION_CASES[case]})

    assert _still_handled(instance, healthy) == []
    (listed,) = [p for p in pending(instance=instance) if p.run_id == bad]
    assert (listed.problem, listed.waiting_for) == ("", "a decision by anyone")  # still waits, readable
    (ignored,) = [e for e in audit_trail(bad, instance=instance) if e.kind == "ignored"]
    expected = parse_decision(DECISION_CASES[case])
    assert isinstance(expected, str)  # every case is malformed
    assert ignored.record["reason"] == cut(f"malformed decision record: {expected}")
    assert len(ignored.record["reason"]) <= MAX_REASON_CHARS


@pytest.mark.parametrize("case", list(OTHER_TAGS))
def test_a_malformed_bookkeeping_tag_never_jams_another_run(
    instance: DagsterInstance, requests: Path, case: str
) -> None:
    healthy, bad = _two_parked(instance)
    key, value = OTHER_TAGS[case]
    instance.add_run_tags(bad, {key: value})
    reported = _still_handled(instance, healthy)
    gates = {p.gate: p.problem for p in pending(instance=instance) if p.run_id == bad}
    if key.startswith(AWAITING_PREFIX):  # a gate that cannot be read is listed, with why
        assert gates["review"] == ""
        gate = key.removeprefix(AWAITING_PREFIX)
        assert gates[gate].startswith(f"gate {gate[:40]}")
        assert ("the run has no tag" if gate == "ghost" else "its key is 2015 characters") in gates[gate]
    else:
        assert gates == {"review": ""}
        assert reported == []


def test_the_cli_lists_an_unreadable_gate_and_every_healthy_one(
    instance: DagsterInstance, dagster_home: Path, requests: Path
) -> None:
    healthy, bad = _two_parked(instance)
    instance.add_run_tags(bad, {REQUEST_PREFIX + "review": NESTED})
    listed = run_cli("pending", home=dagster_home)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    unreadable = f"{bad}  review  NOT READABLE: gate review of run {bad} cannot be decided: its request cannot be read "
    assert any(line.startswith(unreadable) for line in lines)
    assert any(line.startswith(f"{healthy}  review  gated > approval:review  payload ") for line in lines)
    assert lines[-1] == "2 pending approval(s)"


def test_a_run_that_cannot_be_handled_is_reported_and_the_others_are_not_stopped(
    instance: DagsterInstance, requests: Path
) -> None:
    """A run deleted while a tick handles it (its tags cannot be written): reported, the next run still planned."""
    healthy, gone = _two_parked(instance)
    instance.add_run_tags(gone, {DECISION_PREFIX + "review/eve": "{}"})  # ignored: its audit writes to the run
    snapshot = instance.get_run_by_id(gone)
    instance.delete_run(gone)
    reported: list[str] = []

    def plan_of(run: object) -> list[object]:
        plan = resume_plan(run, instance)  # type: ignore[arg-type]
        return [plan] if plan is not None else []

    runs = [snapshot, instance.get_run_by_id(healthy)]
    plans = _each_run(runs, plan_of, reported.append)  # type: ignore[arg-type]
    assert [p.run_id for p in plans] == [healthy]  # type: ignore[attr-defined]
    assert reported == [f"run {gone} was skipped: Run {gone} was not found in instance."]


def test_an_ignored_record_is_audited_once_not_again_when_another_tag_is_added(
    instance: DagsterInstance, requests: Path
) -> None:
    parked = park(gated_job, instance)

    def ignored() -> list[str]:
        return [e.record["tag"] for e in audit_trail(parked, instance=instance) if e.kind == "ignored"]

    forged = '{"verdict":"approve","by":"eve","payload_hash":"0000"}'
    instance.add_run_tags(parked, {DECISION_PREFIX + "review/eve": forged})
    assert resumable(instance) == [] and resumable(instance) == []  # two ticks
    assert ignored() == ["flujo/decision/review/eve"]
    instance.add_run_tags(parked, {DECISION_PREFIX + "review/mallory": "not json"})
    assert resumable(instance) == []
    assert ignored() == ["flujo/decision/review/eve", "flujo/decision/review/mallory"]  # eve's not again
    instance.add_run_tags(parked, {DECISION_PREFIX + "review/eve": forged.replace("0000", "1111")})
    assert resumable(instance) == [] and resumable(instance) == []
    assert ignored() == ["flujo/decision/review/eve", "flujo/decision/review/mallory", "flujo/decision/review/eve"]
    run = instance.get_run_by_id(parked)
    assert run is not None and len(_remembered(run.tags["flujo/ignored/review"])) == 3


# --- total functions: arbitrary text in, a record or a reason out ----------------------------------------------------

HASH = "ab" * 32
REQUEST = Request(path="p", payload_hash=HASH, show=("draft",), policy=Policy(quorum=2), editable=("draft",))
FIELDS = sorted({*Request.model_fields, *Policy.model_fields, *Decision.model_fields, "show", "junk"})
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
records = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).map(lambda d: json.dumps(d, allow_nan=True))
texts = st.text(max_size=200) | st.binary(max_size=100).map(lambda b: b.decode("utf-8", "surrogateescape"))
structural = st.lists(st.sampled_from(["[", "{", '"a":', "1e400", BIG_INT[:400], ",", "]", "}", '"\\ud800"']))
anything = texts | records | structural.map("".join)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=anything, key=st.text(max_size=20))
def test_tag_readers_never_raise_on_any_text(raw: str, key: str) -> None:
    request = Request.from_tag(raw, gate="g")
    assert isinstance(request, (Request, str))
    if isinstance(request, Request):
        request.deadlines()
        request.stage(datetime.now(UTC))
    decision = parse_decision(raw)
    assert isinstance(decision, (Decision, str))
    binding = Binding(gate="g", runs=frozenset({"run-1"}))
    known = Requester(run_id="run-1", user="ana")
    check = partial(check_decision, binding=binding, requester=known, validate_edits=False, verify_signature=False)
    assert isinstance(check(raw, REQUEST), (Decision, str))
    tags = {DECISION_PREFIX + "g/" + key: raw, DECISION_PREFIX + "g/ana": raw, DECISION_PREFIX + key: raw}
    records = [*tags.items(), ("the decision event of run run-1", raw)]
    unknown = Requester(run_id="run-1", user=None)
    outcome = tally(records, REQUEST, binding=binding, requester=unknown, now=datetime.now(UTC), validate_edits=False)
    assert all(len(reason) <= MAX_REASON_CHARS for _, reason in outcome.ignored)
    assert isinstance(_remembered(raw), list)


def test_the_cheap_checks_come_before_any_parse() -> None:
    """An overlong tag is refused by its length alone: a megabyte of nesting is never handed to the parser. (A
    lone surrogate cannot reach run storage, which refuses it, but a reader is not trusted to have come from
    there.)"""
    assert read_record(Decision, "[" * (MAX_RECORD_TAG_CHARS + 1)) == (
        f"{MAX_RECORD_TAG_CHARS + 1} characters, over the {MAX_RECORD_TAG_CHARS} a record tag may hold"
    )
    assert read_record(Decision, 5) == "not text (a int)"
    assert read_record(Decision, "\udc80") == "not UTF-8 text (it holds a lone surrogate)"


def test_the_next_tick_resumes_a_healthy_run_beside_runs_with_malformed_tags(
    served: tuple[Webserver, DagsterInstance, Path],  # noqa: F811  (the fixture imported above)
) -> None:
    """End to end, through a real webserver: three runs launched through GraphQL park; one gets an unreadable
    request, one a malformed decision and resume key; the healthy one is approved. One tick resumes it, and only
    it; the others stay parked, listed, with what is wrong."""
    server, instance, _ = served
    (location,) = server.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    selector = {"repositoryLocationName": location["name"], "repositoryName": "__repository__", "jobName": "gated"}
    params = {"selector": selector, "runConfigData": INPUTS}
    healthy, bad_request, bad_decision = (
        server.graphql(LAUNCH, {"params": params})["launchRun"]["run"]["runId"] for _ in range(3)
    )
    for run_id in (healthy, bad_request, bad_decision):
        wait_done(instance, run_id)
    assert {p.run_id for p in pending(instance=instance)} == {healthy, bad_request, bad_decision}
    instance.add_run_tags(bad_request, {REQUEST_PREFIX + "review": NESTED})
    instance.add_run_tags(bad_decision, {DECISION_PREFIX + "review/eve": '{"show": 5}', "flujo/resume_key": NESTED})
    decide(healthy, verdict="approve", by="ana", instance=instance)

    sensor = approvals_sensor(server.url, interval=timedelta(seconds=5))
    sensor.evaluate_tick(build_sensor_context(instance=instance, definitions=defs))  # the sensor yields its result
    children = {r.parent_run_id: r.run_id for r in instance.get_runs() if r.parent_run_id}
    assert set(children) == {healthy}
    assert wait_done(instance, children[healthy]) == DagsterRunStatus.SUCCESS, server.log.read_text()[-3000:]
    listed = {p.run_id: p.problem for p in pending(instance=instance)}
    assert listed[bad_decision] == "" and "its request cannot be read" in listed[bad_request]
    ignored = {r: [e.record["tag"] for e in audit_trail(r, instance=instance) if e.kind == "ignored"] for r in listed}
    assert ignored == {bad_request: ["flujo/request/review"], bad_decision: ["flujo/decision/review/eve"]}


def test_a_tag_of_thousands_of_bad_names_is_one_problem() -> None:
    """Names lists are read up to the first bad name (pydantic's fail-fast): 16000 bad names cost one error, not
    16000 (which took 12 ms to validate and report, per tag, per tick)."""
    raw = '{"path":"p","payload_hash":"x","show":[' + ",".join(["1"] * 16_000) + '],"approvers":[2,3]}'
    assert Request.from_tag(raw, gate="g") == (
        "show.0: input should be a valid string, got 1; policy.approvers.0: input should be a valid string, got 2"
    )
