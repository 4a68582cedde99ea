"""The reviewers' inbox (`flujo-dagster inbox`) against a real Dagster instance with parked runs: the list and its
filters, a gate's page (short run ids resolve), deciding through the form (identity from the proxy's header or
self-declared, edits checked, nothing recorded on a bad form), CSRF and cross-site refusals, escaping of model
output, and the resume launched at once (here the webserver is unreachable: the sensor stays the fallback)."""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance, JobDefinition, reconstructable
from dagster._core.execution.api import execute_run
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from pydantic import TypeAdapter, create_model
from starlette.testclient import TestClient

from flujo_dagster import Approval, Pipeline
from flujo_dagster.adapter.control.approvals import decide, pending, resume
from flujo_dagster.adapter.control.audit import audit, run_audit
from flujo_dagster.adapter.control.graphql import Webserver
from flujo_dagster.adapter.inbox.app import SECURITY_HEADERS, create_app
from flujo_dagster.adapter.inbox.csrf import COOKIE
from flujo_dagster.adapter.inbox.forms import MAX_BODY_BYTES, parse_form
from flujo_dagster.adapter.inbox.schemas import EditSchema
from flujo_dagster.adapter.ops.approval import MAX_EDIT_SCHEMAS_BYTES, edit_schemas
from flujo_dagster.cli import main
from flujo_dagster.config import inbox_user_header, webserver_url
from flujo_dagster.runtime.approvals import Decision, parse_decision, sign
from tests.approval_defs import REQUEST_LOG, gated_job, loose_job, sourced_job
from tests.policy_defs import quorum_job

HEADER = "X-Forwarded-User"
BASE = "http://127.0.0.1:3100"  # what a reviewer's browser names: a host the inbox answers to
INPUTS = {"ops": {"flujo_inputs": {"config": {"inputs": {"topic": "otters"}}}}}


@pytest.fixture(autouse=True)
def unreachable_webserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Requests logged for the scripted model; the webserver URL a port nothing listens on."""
    log = tmp_path / "requests.log"
    log.touch()
    monkeypatch.setenv(REQUEST_LOG, str(log))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("FLUJO_DAGSTER_WEBSERVER_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("FLUJO_DAGSTER_DECISION_SECRET", raising=False)
    yield


def park(instance: DagsterInstance, job_fn: object, module: str, inputs: dict[str, object] | None = None) -> str:
    """Run `job_fn` until it parks, recorded as launched from a code location (as the webserver would): the inbox
    then resumes it through the webserver, not in process."""
    job = reconstructable(job_fn)
    definition: JobDefinition = job_fn()  # type: ignore[operator]
    target = LoadableTargetOrigin(python_file=module, attribute="defs")
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(InProcessCodeLocationOrigin(target), "__repository__"), definition.name
    )
    run = instance.create_run_for_job(
        job_def=definition,
        run_config={"ops": {"flujo_inputs": {"config": {"inputs": inputs or {}}}}},
        tags={"dagster/user": "requester"},
        remote_job_origin=origin,
        job_code_origin=job.get_python_origin(),
    )
    execute_run(job, run, instance)
    stored = instance.get_run_by_id(run.run_id)
    assert stored is not None and stored.tags.get("flujo/parked") == "true"
    return run.run_id


def client(instance: DagsterInstance, *, header: str | None = HEADER, user: str | None = "ana") -> TestClient:
    app = create_app(instance, server=Webserver(webserver_url()), user_header=header)
    headers = {header: user} if header is not None and user is not None else {}
    return TestClient(app, headers=headers, base_url=BASE)


def token(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert found is not None, page
    return found.group(1)


def decisions(instance: DagsterInstance, run_id: str) -> dict[str, str]:
    run = instance.get_run_by_id(run_id)
    assert run is not None
    return {k: v for k, v in run.tags.items() if k.startswith("flujo/decision/")}


def test_the_list_shows_every_parked_gate_newest_first_with_filters(instance: DagsterInstance) -> None:
    gated = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    quorum = park(instance, quorum_job, "tests/policy_defs.py", {"topic": "owls"})
    with client(instance) as browser:
        page = browser.get("/")
        assert page.status_code == 200
        text = page.text
        assert text.index(quorum) < text.index(gated)  # newest run first
        assert "draft about otters" in text and "draft about owls" in text  # the payload itself, not a preview
        assert f'href="/gates/{gated}/review"' in text and f"/runs/{gated}" in text  # gate page, Dagster run
        assert "gated &gt; approval:review" in text and "May decide: <b>anyone</b>" in text
        assert "May decide: <b>ana, bo, cy</b>" in text and "Quorum: <b>0 of 2</b>" in text
        assert "Signed in as <b>ana</b>" in text
        only_quorum = browser.get("/", params={"pipeline": "quorum"}).text
        assert quorum in only_quorum and gated not in only_quorum
        for_zed = browser.get("/", params={"approver": "Zed"}).text  # anyone may decide on `gated`, not on `quorum`
        assert gated in for_zed and quorum not in for_zed
        assert quorum in browser.get("/", params={"approver": " ANA "}).text  # names compare normalised
        assert "No gate waits that matches these filters" in browser.get("/", params={"pipeline": "looped"}).text
        assert browser.get("/", params={"approver": "x" * 201}).status_code == 400


def test_the_gate_page_shows_payload_policy_and_a_form_and_resolves_short_ids(instance: DagsterInstance) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance) as browser:
        page = browser.get(f"/gates/{parked[:8]}/review")  # the 8 characters the Dagster UI shows
        assert page.status_code == 200
        assert "draft about otters" in page.text and "None yet." in page.text
        assert f'action="/gates/{parked}/review/decide"' in page.text  # the full id from here on
        assert 'name="edit.draft"' in page.text and 'name="name"' not in page.text  # header mode: no name field
        assert 'value="approve"' in page.text and 'value="reject"' in page.text
        cookie = page.headers["set-cookie"]
        assert COOKIE in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert browser.get(f"/gates/{parked}/nope").status_code == 404
        missing = browser.get("/gates/0123456789/review")
        assert missing.status_code == 404 and "has an id starting with &#39;0123456789&#39;" in missing.text


def test_an_ambiguous_short_id_lists_the_runs_it_matches(instance: DagsterInstance) -> None:
    for run_id in ("deadbeef-0000-4000-8000-000000000001", "deadbeef-0000-4000-8000-000000000002"):
        instance.create_run_for_job(job_def=gated_job(), run_id=run_id, run_config=INPUTS)
    with client(instance) as browser:
        page = browser.get("/gates/deadbeef/review")
    assert page.status_code == 404
    assert "is ambiguous" in page.text
    assert "deadbeef-0000-4000-8000-000000000001" in page.text and "deadbeef-0000-4000-8000-000000000002" in page.text


def test_an_approval_with_an_edit_is_recorded_with_the_header_identity_and_resumes_by_the_sensor(
    instance: DagsterInstance,
) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance) as browser:
        form = browser.get(f"/gates/{parked}/review").text
        posted = browser.post(
            f"/gates/{parked}/review/decide",
            data={"csrf": token(form), "verdict": "approve", "comment": "fine", "edit.draft": "edited draft"},
        )
    assert posted.status_code == 200, posted.text
    (raw,) = decisions(instance, parked).values()
    decision = parse_decision(raw)
    assert isinstance(decision, Decision)
    assert (decision.by, decision.verdict, decision.comment) == ("ana", "approve", "fine")
    assert decision.values == {"draft": "edited draft"} and decision.identity == f"header {HEADER}"
    (event,) = [e for e in run_audit(instance, parked) if e.kind == "decision"]
    assert event.record["identity"] == f"header {HEADER}" and f"approve by ana (header {HEADER})" in event.message
    assert "Recorded: <b>approve</b> by ana (header X-Forwarded-User)" in posted.text
    # the webserver cannot be reached: the decision stands and the sensor resumes the run at its next tick
    assert "the decision is recorded, but its resume could not be launched now" in posted.text
    assert "flujo_approvals sensor resumes the run at its next tick" in posted.text


def test_an_unchanged_field_is_no_edit_and_a_rejection_needs_a_comment(instance: DagsterInstance) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance, user="bo") as browser:
        form = browser.get(f"/gates/{parked}/review").text
        url = f"/gates/{parked}/review/decide"
        unexplained = browser.post(url, data={"csrf": token(form), "verdict": "reject", "comment": " "})
        assert unexplained.status_code == 400 and "a rejection needs a comment saying why" in unexplained.text
        assert decisions(instance, parked) == {}
        done = browser.post(
            url,
            data={"csrf": token(form), "verdict": "approve", "edit.draft": "draft about otters\r\n".strip()},
        )
    assert done.status_code == 200, done.text
    decision = parse_decision(decisions(instance, parked)["flujo/decision/review/bo"])
    assert isinstance(decision, Decision) and decision.values == {}


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ('"many"', "a: &#39;many&#39; is not of type &#39;integer&#39;"),  # the key's type (the gate's schema)
        ("many", "a takes JSON (a whole number); this is not valid JSON"),
    ],
)
def test_an_edit_of_the_wrong_type_shows_the_form_error_and_records_nothing(
    instance: DagsterInstance, typed: str, message: str
) -> None:
    parked = park(instance, loose_job, "tests/approval_defs.py")
    with client(instance) as browser:
        form = browser.get(f"/gates/{parked}/g").text
        assert "JSON: a whole number" in form
        posted = browser.post(
            f"/gates/{parked}/g/decide",
            data={"csrf": token(form), "verdict": "approve", "comment": "my note", "edit.a": typed},
        )
    assert posted.status_code == 400
    assert message in posted.text and "Nothing was recorded" in posted.text
    kept = typed.replace('"', "&#34;")
    assert "my note" in posted.text and f">{kept}</textarea>" in posted.text  # what the reviewer typed is kept
    assert decisions(instance, parked) == {}


def test_a_decision_decide_refuses_is_shown_on_the_form(instance: DagsterInstance) -> None:
    parked = park(instance, quorum_job, "tests/policy_defs.py", {"topic": "owls"})
    with client(instance, user="zed") as browser:
        form = browser.get(f"/gates/{parked}/review").text
        posted = browser.post(f"/gates/{parked}/review/decide", data={"csrf": token(form), "verdict": "approve"})
    assert posted.status_code == 400
    assert "would not count: &#39;zed&#39; may not decide here (approvers: ana, bo, cy)" in posted.text
    assert decisions(instance, parked) == {}


def test_local_mode_records_a_self_declared_name(instance: DagsterInstance) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance, header=None) as browser:
        form = browser.get(f"/gates/{parked}/review").text
        assert 'name="name"' in form and "Local mode: names are self-declared" in form
        nameless = browser.post(f"/gates/{parked}/review/decide", data={"csrf": token(form), "verdict": "approve"})
        assert nameless.status_code == 400 and "your name: it is empty" in nameless.text
        posted = browser.post(
            f"/gates/{parked}/review/decide", data={"csrf": token(form), "verdict": "approve", "name": "Cy"}
        )
    assert posted.status_code == 200, posted.text
    decision = parse_decision(decisions(instance, parked)["flujo/decision/review/Cy"])
    assert isinstance(decision, Decision) and decision.identity == "self-declared"


@pytest.mark.parametrize("user", [None, "", "x" * 201, "ana\x1b[31m"])
def test_without_a_reviewer_in_the_header_every_page_is_refused_with_401(
    instance: DagsterInstance, user: str | None
) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance, user=None) as browser:
        headers = {HEADER: user} if user is not None else {}
        listed = browser.get("/", headers=headers)
        assert listed.status_code == 401 and "Not signed in" in listed.text and "draft about" not in listed.text
        assert browser.get(f"/gates/{parked}/review", headers=headers).status_code == 401
        form = browser.get(f"/gates/{parked}/review", headers={HEADER: "ana"}).text
        data = {"csrf": token(form), "verdict": "approve"}
        assert browser.post(f"/gates/{parked}/review/decide", data=data, headers=headers).status_code == 401
    assert decisions(instance, parked) == {}


def test_a_header_sent_twice_names_no_reviewer(instance: DagsterInstance) -> None:
    with client(instance, user=None) as browser:
        page = browser.get("/", headers=[(HEADER, "ana"), (HEADER, "mallory")])  # type: ignore[arg-type]
    assert page.status_code == 401 and "2 times" in page.text


@pytest.mark.parametrize(
    "attack",
    [
        {"data": {"verdict": "approve"}},  # no token
        {"data": {"verdict": "approve", "csrf": "0" * 64}},  # a token of no cookie
        {"data": {"verdict": "approve"}, "with_token": True, "headers": {"Origin": "https://evil.example"}},
        {"data": {"verdict": "approve"}, "with_token": True, "headers": {"Origin": "null"}},
        {"data": {"verdict": "approve"}, "with_token": True, "headers": {"Sec-Fetch-Site": "cross-site"}},
        {"data": {"verdict": "approve"}, "with_token": True, "no_cookie": True},
    ],
)
def test_a_forged_or_cross_site_post_is_refused_with_403_and_records_nothing(
    instance: DagsterInstance, attack: dict[str, object]
) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance) as browser:
        form = browser.get(f"/gates/{parked}/review").text
        data = dict(attack["data"])  # type: ignore[call-overload]
        if attack.get("with_token"):
            data["csrf"] = token(form)
        if attack.get("no_cookie"):
            browser.cookies.clear()
        headers = attack.get("headers", {})
        posted = browser.post(f"/gates/{parked}/review/decide", data=data, headers=headers)  # type: ignore[arg-type]
    assert posted.status_code == 403, posted.text
    assert decisions(instance, parked) == {}
    assert [e for e in run_audit(instance, parked) if e.kind == "decision"] == []


def test_a_same_origin_post_passes_the_site_checks(instance: DagsterInstance) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    with client(instance) as browser:
        form = browser.get(f"/gates/{parked}/review").text
        headers = {"Origin": BASE, "Sec-Fetch-Site": "same-origin"}
        data = {"csrf": token(form), "verdict": "approve"}
        assert browser.post(f"/gates/{parked}/review/decide", data=data, headers=headers).status_code == 200
    assert list(decisions(instance, parked)) == ["flujo/decision/review/ana"]


def test_a_page_under_another_host_name_is_refused_dns_rebinding(instance: DagsterInstance) -> None:
    """A page whose own name resolves to the inbox's address (DNS rebinding) sends its name as `Host`, a matching
    `Origin` and `Sec-Fetch-Site: same-origin`: the inbox answers to no such host, so the page can neither read a
    form (its token) nor post one; the hosts it is told to answer to pass."""
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    app = create_app(instance, server=Webserver(webserver_url()), hosts=("Inbox.Internal:8443",))
    evil = {"Origin": "http://evil.example:3100", "Sec-Fetch-Site": "same-origin"}
    with TestClient(app, base_url="http://evil.example:3100", headers=evil) as rebound:
        for path in ("/", f"/gates/{parked}/review"):
            answer = rebound.get(path)
            assert (answer.status_code, answer.text) == (400, "Invalid host header")
            assert answer.headers["X-Content-Type-Options"] == "nosniff"  # the security headers still apply
        posted = rebound.post(f"/gates/{parked}/review/decide", data={"verdict": "approve", "name": "ana"})
        assert posted.status_code == 400
    assert decisions(instance, parked) == {}
    for base in ("http://inbox.internal:3100", "http://localhost:3100", "http://[::1]:3100", BASE):
        with TestClient(app, base_url=base) as browser:
            assert browser.get(f"/gates/{parked}/review").status_code == 200, base


def test_model_output_with_html_and_terminal_escapes_is_rendered_inert(instance: DagsterInstance) -> None:
    evil = "<script>alert(1)</script><img/src=x/onerror=alert(1)>[x](javascript:alert(1))\x1b[31mred\x1b]0;t\x07"
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": evil})
    (waiting,) = pending(instance=instance)
    assert "<script>" in waiting.preview  # the model output holds it
    with client(instance) as browser:
        pages = [browser.get("/").text, browser.get(f"/gates/{parked}/review").text]
    for text in pages:
        assert "draft about &lt;script&gt;alert(1)&lt;/script&gt;&lt;img/src=x/onerror=alert(1)&gt;" in text
        lowered = text.lower()
        assert "<script" not in lowered and "<img" not in lowered and 'href="javascript:' not in lowered
        assert "\x1b" not in text and "\x07" not in text and "red" in text


def test_every_response_carries_the_security_headers_and_only_decisions_are_writable(
    instance: DagsterInstance,
) -> None:
    app = create_app(instance, server=Webserver(webserver_url()), user_header=HEADER)
    posts = [r.path for r in app.routes if "POST" in (getattr(r, "methods", None) or ())]  # type: ignore[attr-defined]
    assert posts == ["/gates/{run_id}/{gate}/decide"]
    with TestClient(app, headers={HEADER: "ana"}, base_url=BASE) as browser:
        responses = [
            browser.get("/"),
            browser.get("/nowhere"),
            browser.get("/gates/abc/review/decide"),  # GET on the writing route
            browser.post("/"),
            browser.delete("/gates/abc/review"),
        ]
    assert [r.status_code for r in responses] == [200, 404, 405, 405, 405]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value
    assert "<script" not in responses[0].text.lower()


def test_an_oversized_or_malformed_form_is_refused_and_records_nothing(instance: DagsterInstance) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    url = f"/gates/{parked}/review/decide"
    with client(instance) as browser:
        csrf = token(browser.get(f"/gates/{parked}/review").text)
        form = {"content-type": "application/x-www-form-urlencoded"}
        big = f"csrf={csrf}&verdict=approve&comment=" + "a" * MAX_BODY_BYTES
        assert browser.post(url, content=big, headers=form).status_code == 413
        assert browser.post(url, content=b"csrf=\xff\xfe", headers=form).status_code == 400
        assert browser.post(url, content=f"csrf={csrf}&csrf={csrf}&verdict=approve", headers=form).status_code == 400
        as_json = json.dumps({"csrf": csrf, "verdict": "approve"})
        assert browser.post(url, content=as_json, headers={"content-type": "application/json"}).status_code == 415
    assert decisions(instance, parked) == {}


def test_forms_are_parsed_by_a_total_function() -> None:
    assert parse_form(b"a=1&b=&c=%C3%A9") == {"a": "1", "b": "", "c": "é"}
    assert parse_form(b"") == {}
    for bad in (b"\xff", b"a=%ff", b"a=1&a=2", b"=&&=", b"&".join([b"a%d=1" % i for i in range(300)])):
        assert isinstance(parse_form(bad), str)


def test_the_identity_is_signed_only_when_set() -> None:
    fields = {"verdict": "approve", "by": "ana", "payload_hash": "p", "at": "2026-01-01T00:00:00+00:00"}
    fields |= {"run_id": "r", "gate": "g", "path": "x > approval:g", "state_hash": "s"}
    plain = Decision.model_validate(fields)
    old_text = ["flujo-decision/2", "r", "g", "x > approval:g", "p", "s", "approve", {}, "ana", plain.at, ""]
    digest = hmac.new(b"k", json.dumps(old_text, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256)
    assert sign(plain, secret="k").signature == digest.hexdigest()  # records without an identity sign as before
    assert "identity" not in plain.to_tag()
    declared = Decision.model_validate({**fields, "identity": "self-declared"})
    assert sign(declared, secret="k").signature != sign(plain, secret="k").signature
    assert json.loads(declared.to_tag())["identity"] == "self-declared"


def test_the_inbox_command_refuses_a_header_that_is_no_header_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUJO_DAGSTER_INBOX_USER_HEADER", "X Forwarded User")
    result = CliRunner().invoke(main, ["inbox"])
    assert result.exit_code == 2
    assert "FLUJO_DAGSTER_INBOX_USER_HEADER='X Forwarded User' is not an HTTP header name" in result.output
    assert inbox_user_header("X-Forwarded-User") == "X-Forwarded-User"
    monkeypatch.delenv("FLUJO_DAGSTER_INBOX_USER_HEADER")
    assert inbox_user_header() is None


def post_edits(instance: DagsterInstance, parked: str, **edits: str) -> tuple[int, str]:
    """Approve gate `curate` of `parked` through the form with `edits` (field `edit.<key>`): status and page."""
    with client(instance) as browser:
        form = browser.get(f"/gates/{parked}/curate").text
        data = {"csrf": token(form), "verdict": "approve", "comment": "my note"}
        posted = browser.post(f"/gates/{parked}/curate/decide", data=data | {f"edit.{k}": v for k, v in edits.items()})
    return posted.status_code, posted.text


def field_errors(page: str) -> list[str]:
    return re.findall(r'<div class="error">([^<]*)</div>', page)


def test_an_edit_not_of_its_keys_type_is_refused_with_the_schema_errors_and_records_nothing(
    instance: DagsterInstance,
) -> None:
    parked = park(instance, sourced_job, "tests/approval_defs.py", {"topic": "otters"})
    (request,) = [e for e in run_audit(instance, parked) if e.kind == "request"]
    recorded = request.record["edit_schemas"]
    assert set(recorded) == {"sources", "limit"} and json.loads(recorded["limit"]) == {"type": "integer"}
    assert json.loads(recorded["sources"])["items"] == {"$ref": "#/$defs/Source"}  # the key's type, pydantic's
    typed = '[{"url": "https://x.example"}, {"id": 5}]'
    status, page = post_edits(instance, parked, sources=typed, limit="null")
    assert status == 400 and "Nothing was recorded" in page
    assert field_errors(page) == [
        "sources.0: &#39;id&#39; is a required property; sources.1.id: 5 is not of type &#39;string&#39;",
        "limit: None is not of type &#39;integer&#39;",
    ]
    assert ">[{&#34;url&#34;: &#34;https://x.example&#34;}, {&#34;id&#34;: 5}]</textarea>" in page  # kept as typed
    assert "my note" in page and decisions(instance, parked) == {}
    many = json.dumps([{"url": str(i)} for i in range(8)])  # eight errors: five shown, then "and more"
    status, page = post_edits(instance, parked, sources=many)
    (shown,) = field_errors(page)
    assert status == 400 and shown.count("is a required property") == 5 and shown.endswith("; and more")
    assert decisions(instance, parked) == {}
    status, page = post_edits(instance, parked, sources='[{"id": "b", "url": "https://b.example"}]', limit="5")
    assert status == 200, page
    decision = parse_decision(decisions(instance, parked)["flujo/decision/curate/ana"])
    assert isinstance(decision, Decision)
    assert decision.values == {"sources": [{"id": "b", "url": "https://b.example"}], "limit": 5}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local port that accepts connections, to tell whether anything was fetched from it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


BROKEN_SCHEMAS: dict[str, object] = {
    "none recorded (a gate before schemas)": None,
    "not a mapping": ["sources", "limit"],
    "not JSON, or not text": {"sources": '{"items": ', "limit": 5},
    "JSON that is no schema": {"sources": '{"type": 5}', "limit": "[]"},
    "larger than 64 KiB": {"sources": json.dumps({"type": "string", "description": "x" * 70_000})},
    "nested too deep to parse": {"sources": "[" * 30_000 + "]" * 30_000},
    "references outside it, or to itself": {
        "sources": '{"$ref": "http://127.0.0.1:PORT/s.json"}',
        "limit": '{"$ref": "#"}',
    },
}


@pytest.mark.parametrize("recorded", list(BROKEN_SCHEMAS.values()), ids=list(BROKEN_SCHEMAS))
def test_without_a_usable_recorded_schema_an_edit_gets_the_kind_check(
    instance: DagsterInstance, listener: socket.socket, recorded: object
) -> None:
    parked = park(instance, sourced_job, "tests/approval_defs.py", {"topic": "otters"})
    run = instance.get_run_by_id(parked)
    assert run is not None
    port = str(listener.getsockname()[1])
    fields = {} if recorded is None else {"edit_schemas": json.loads(json.dumps(recorded).replace("PORT", port))}
    audit(instance, run, "request", "curate", "a later request", **fields)  # the latest request event counts
    status, page = post_edits(instance, parked, sources='[{"url": "no id"}]', limit='"7"')
    assert status == 400 and field_errors(page) == ["limit takes a whole number, not text"]  # the kind check
    assert decisions(instance, parked) == {}
    status, page = post_edits(instance, parked, sources='[{"url": "no id"}]')  # right kind: the gate checks it
    assert status == 200, page
    assert list(decisions(instance, parked)) == ["flujo/decision/curate/ana"]
    with pytest.raises(BlockingIOError):  # nothing connected: no reference was fetched
        listener.accept()


def test_a_key_whose_schema_is_too_large_is_recorded_without_one() -> None:
    choices = tuple(f"choice {i:05d} " + "x" * 20 for i in range(3_000))
    pick = cast(Any, Literal)[choices]
    assert len(json.dumps(TypeAdapter(pick).json_schema())) > MAX_EDIT_SCHEMAS_BYTES
    wide = create_model("Wide", pick=(pick, choices[0]), note=(str, ""), count=(int, 0))
    edit = create_model("WideEdit", pick=(str, ""), note=(str, ""), count=(int, 0))
    pipeline = Pipeline("wide", context=wide, steps=[Approval("g", show=["pick"], decision=edit)])
    recorded = edit_schemas(pipeline, ("note", "pick", "count"))
    assert recorded == {"note": '{"type":"string"}', "pick": None, "count": '{"type":"integer"}'}


def test_the_page_of_a_gate_already_resumed_names_the_run_to_decide_on(instance: DagsterInstance) -> None:
    parked = park(instance, gated_job, "tests/approval_defs.py", {"topic": "otters"})
    decide(parked, verdict="approve", by="ana", instance=instance)
    resumed = resume(parked, job=reconstructable(gated_job), instance=instance)
    with client(instance) as browser:
        page = browser.get(f"/gates/{parked[:8]}/review")
    assert page.status_code == 404
    said = html.unescape(re.sub(r"\s+", " ", page.text))
    assert (
        f"run {parked} was already resumed (gate review) as run {resumed}, which is not parked at it (status "
        f"SUCCESS); see flujo-dagster audit {parked}"
    ) in said, said


def test_a_pattern_is_matched_in_linear_time_as_pydantic_matches_it() -> None:
    """Python's `re` backtracks on `^(\\w+\\s?)*$` against `aaa...!` (about 4 times longer per character: hours at
    40 characters); the inbox matches patterns with Rust's engine, as pydantic does, so a crafted edit cannot hold
    a worker. A pattern that engine cannot take (a look-ahead) is not applied: the kind check decides."""
    pattern, crafted = r"^(\w+\s?)*$", "a" * 40 + "!"
    slow = EditSchema(key="title", schema={"type": "string", "pattern": pattern})
    assert slow.problems(crafted) == [f"title: {crafted!r} does not match {pattern!r}"]
    assert slow.problems("two words") == []
    assert EditSchema(key="t", schema={"type": "string", "pattern": r"^(?=a)a$"}).problems("a") is None
