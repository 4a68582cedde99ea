"""The inbox's routes (Starlette): `GET /` lists every parked gate (filters `?pipeline=`, `?approver=`),
`GET /gates/{run_id}/{gate}` shows one (a short run id resolves) with its decision form, and
`POST /gates/{run_id}/{gate}/decide`, the only writing route, records a decision with `decide` and resumes the run
at once with `resume_now` (the `flujo_approvals` sensor stays the fallback). Every response carries a strict
Content-Security-Policy and no script; every page is rendered by Jinja2 with autoescape on."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dagster import DagsterInstance
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flujo_dagster.adapter.control.approvals import decide, gates_waiting, pending, resumed_instead
from flujo_dagster.adapter.control.graphql import Webserver
from flujo_dagster.adapter.control.launch import ResumeOutcome, resume_now
from flujo_dagster.adapter.control.run_ids import resolve_run_id
from flujo_dagster.adapter.inbox.csrf import COOKIE, FIELD, Csrf, cross_site
from flujo_dagster.adapter.inbox.forms import FORM_TYPE, MAX_BODY_BYTES, Edit, parse_edits, parse_form
from flujo_dagster.adapter.inbox.gates import GateView, gate_view, may_decide
from flujo_dagster.adapter.inbox.identity import Reviewer, from_form, from_header
from flujo_dagster.config import decision_secret, shown_url
from flujo_dagster.errors import ApprovalError
from flujo_dagster.runtime.approvals import Verdict

__all__ = ["SECURITY_HEADERS", "Inbox", "create_app"]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: a browser then sends `Origin: null` with the form
    "Cache-Control": "no-store",
}
MAX_PARAM_CHARS = 200
MAX_RUN_ID_CHARS = 64
MAX_GATE_CHARS = 300
MAX_COMMENT_CHARS = 4_000
MAX_LISTED = 200
"""At most this many gates on the list page (newest runs first)."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
"""The host names the inbox always answers to (as a `Host` header names them: an IPv6 address in brackets)."""


def host_name(host: str) -> str:
    """`host` as the `Host` header names it, without a port, lowercase: `::1` -> `[::1]`, `a.example:8443` ->
    `a.example`."""
    given = host.strip().lower()
    if given.startswith("["):
        return given.split("]", 1)[0] + "]"
    if given.count(":") > 1:  # an IPv6 address
        return f"[{given}]"
    return given.split(":", 1)[0]


@dataclass(frozen=True)
class Inbox:
    """The app's settings: the instance, the header naming the reviewer (None: local mode, names typed and
    self-declared), the webserver resumes launch through, the inbox's public URL, and the CSRF key."""

    instance: DagsterInstance
    user_header: str | None
    server: Webserver
    public_url: str | None = None
    csrf: Csrf = field(default_factory=Csrf)
    templates: Environment = field(
        default_factory=lambda: Environment(
            loader=PackageLoader("flujo_dagster.adapter.inbox", "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    )

    @property
    def dagster_url(self) -> str:
        """The webserver's URL as it may be shown (no credentials), for links to runs."""
        return shown_url(self.server.url).removesuffix("?***")


class _SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response (errors and 404s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_secured if scope["type"] == "http" else send)


def _inbox(request: Request) -> Inbox:
    inbox: Inbox = request.app.state.inbox
    return inbox


def _nonce(request: Request) -> tuple[str, bool]:
    """The CSRF cookie's nonce, and whether it is new (then the response sets it)."""
    nonce = request.cookies.get(COOKIE)
    return (nonce, False) if nonce is not None and Csrf.valid_nonce(nonce) else (Csrf.new_nonce(), True)


def _page(request: Request, template: str, status: int = 200, **context: object) -> HTMLResponse:
    """`template` rendered with the shared context (who is signed in, the CSRF token), setting the CSRF cookie
    when the request has none."""
    inbox = _inbox(request)
    nonce, new = _nonce(request)
    signed_in = _signed_in(request)
    html = inbox.templates.get_template(template).render(
        reviewer=signed_in if isinstance(signed_in, Reviewer) else None,
        header_mode=inbox.user_header is not None,
        csrf_field=FIELD,
        csrf_token=inbox.csrf.token(nonce),
        dagster_url=inbox.dagster_url,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    if new:
        secure = request.url.scheme == "https" or (inbox.public_url or "").startswith("https://")
        response.set_cookie(COOKIE, nonce, httponly=True, samesite="strict", secure=secure, path="/")
    return response


def _refused(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    """An error page."""
    return _page(request, "error.html", status, title=title, message=message)


def _signed_in(request: Request) -> Reviewer | str | None:
    """The reviewer the proxy's header names (header mode), why none is named, or None in local mode."""
    header = _inbox(request).user_header
    if header is None:
        return None
    return from_header(request.headers.getlist(header), header)


def _unauthenticated(request: Request) -> HTMLResponse | None:
    """The 401 page when the inbox is in header mode and the request names no reviewer, else None."""
    signed_in = _signed_in(request)
    if isinstance(signed_in, str):
        return _refused(request, 401, "Not signed in", signed_in)
    return None


def index(request: Request) -> Response:
    """Every gate runs are parked at, newest run first, filtered by pipeline (job) and approver."""
    refused = _unauthenticated(request)
    if refused is not None:
        return refused
    params = {k: request.query_params.get(k, "").strip() for k in ("pipeline", "approver")}
    if any(len(v) > MAX_PARAM_CHARS for v in request.query_params.values()):
        return _refused(request, 400, "Bad filter", f"a filter is longer than {MAX_PARAM_CHARS} characters")
    inbox, problems = _inbox(request), list[str]()
    secret = decision_secret()
    views: list[GateView] = []
    jobs: set[str] = set()
    for waiting in pending(instance=inbox.instance, secret=secret, report=problems.append):
        run = inbox.instance.get_run_by_id(waiting.run_id)
        if run is None:
            continue
        jobs.add(run.job_name)
        if params["pipeline"] and run.job_name != params["pipeline"]:
            continue
        if params["approver"] and not may_decide(waiting, params["approver"]):
            continue
        if len(views) < MAX_LISTED:
            views.append(gate_view(inbox.instance, run, waiting, secret=secret, full=False))
    return _page(
        request, "index.html", views=views, jobs=sorted(jobs), filters=params, problems=problems, limit=MAX_LISTED
    )


def _find(request: Request) -> GateView | HTMLResponse:
    """The gate the path names (a short run id resolved), with its decisions and edit fields, or the page that
    says why there is none."""
    text, gate = request.path_params["run_id"], request.path_params["gate"]
    if len(text) > MAX_RUN_ID_CHARS or len(gate) > MAX_GATE_CHARS:
        return _refused(request, 400, "Bad gate address", "the run id or the gate name is too long")
    inbox = _inbox(request)
    try:
        run_id = resolve_run_id(inbox.instance, text)
    except ApprovalError as exc:
        return _refused(request, 404, "No such run", str(exc))
    run = inbox.instance.get_run_by_id(run_id)
    secret = decision_secret()
    found = [w for w in gates_waiting(inbox.instance, run, secret=secret) if w.gate == gate] if run else []
    if run is None or not found:
        instead = resumed_instead(inbox.instance, run, gate) if run is not None else None
        return _refused(
            request,
            404,
            "This gate does not wait",
            instead or f"run {run_id} is not parked at gate {gate!r} (any more)",
        )
    return gate_view(inbox.instance, run, found[0], secret=secret, full=True)


def gate_page(request: Request) -> Response:
    """One gate: its payload, policy, decisions so far and the decision form."""
    refused = _unauthenticated(request)
    if refused is not None:
        return refused
    view = _find(request)
    if isinstance(view, HTMLResponse):
        return view
    return _page(request, "gate.html", view=view, typed={}, errors={}, error="")


def _form_problem(request: Request, fields: Mapping[str, str], view: GateView) -> tuple[Reviewer, Edit] | str:
    """The reviewer and edits of a decision form, or what is wrong with it (shown on the form)."""
    signed_in = _signed_in(request)
    reviewer = signed_in if isinstance(signed_in, Reviewer) else from_form(fields)
    if isinstance(reviewer, str):
        return reviewer
    verdict, comment = fields.get("verdict"), fields.get("comment", "")
    if verdict not in {"approve", "reject"}:
        return "choose Approve or Reject"
    if len(comment) > MAX_COMMENT_CHARS:
        return f"the comment is longer than {MAX_COMMENT_CHARS} characters"
    if verdict == "reject" and not comment.strip():
        return "a rejection needs a comment saying why"
    edits = parse_edits(fields, list(view.edits)) if verdict == "approve" else Edit({}, {})
    if edits.errors:
        return "an edited value does not fit its key"
    return reviewer, edits


def _decide(request: Request, fields: dict[str, str]) -> Response:
    """Record the form's decision and resume the run at once (blocking: run in a worker thread)."""
    view = _find(request)
    if isinstance(view, HTMLResponse):
        return view
    checked = _form_problem(request, fields, view)
    if isinstance(checked, str):
        edits = parse_edits(fields, list(view.edits))
        return _page(request, "gate.html", 400, view=view, typed=fields, errors=edits.errors, error=checked)
    reviewer, edits = checked
    inbox, secret, w = _inbox(request), decision_secret(), view.waiting
    verdict: Verdict = "approve" if fields["verdict"] == "approve" else "reject"
    try:
        decision = decide(
            w.run_id,
            verdict=verdict,
            by=reviewer.name,
            instance=inbox.instance,
            gate=w.gate,
            comment=fields.get("comment", "").replace("\r\n", "\n"),
            values=edits.values or None,
            secret=secret,
            identity=reviewer.identity,
        )
    except ApprovalError as exc:
        return _page(request, "gate.html", 400, view=view, typed=fields, errors={}, error=str(exc))
    outcome: ResumeOutcome = resume_now(
        inbox.instance, w.run_id, server=inbox.server, secret=secret, resumed_by=f"inbox: {reviewer.name}"
    )
    return _page(request, "result.html", view=view, decision=decision, outcome=outcome)


async def _body(request: Request) -> bytes | HTMLResponse:
    """The request body, at most `MAX_BODY_BYTES` (else the 413 page; nothing more is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return _refused(request, 413, "Form too large", f"a decision form is at most {MAX_BODY_BYTES // 1024} KiB")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            return _refused(request, 413, "Form too large", f"a decision form is at most {MAX_BODY_BYTES // 1024} KiB")
    return bytes(body)


def _hosts(request: Request) -> set[str]:
    """The hosts a same-site request's `Origin` may name: this request's `Host` (one the app answers to: see
    `create_app`), and the inbox's public URL's."""
    public = _inbox(request).public_url
    return {request.headers.get("host", "").lower(), *([urlsplit(public).netloc.lower()] if public else [])}


async def decide_route(request: Request) -> Response:
    """`POST /gates/{run_id}/{gate}/decide`: checks the request's site, the reviewer, the body and the CSRF token
    before anything is read from the instance; then records the decision and resumes the run."""
    refused = cross_site(request.headers.get("origin"), request.headers.get("sec-fetch-site"), _hosts(request))
    if refused is not None:
        return _refused(request, 403, "Refused", refused)
    unauthenticated = _unauthenticated(request)
    if unauthenticated is not None:
        return unauthenticated
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        return _refused(request, 415, "Not a form", f"a decision is posted as {FORM_TYPE}")
    body = await _body(request)
    if isinstance(body, HTMLResponse):
        return body
    fields = parse_form(body)
    if isinstance(fields, str):
        return _refused(request, 400, "Bad form", fields)
    if not _inbox(request).csrf.check(request.cookies.get(COOKIE), fields.get(FIELD)):
        return _refused(
            request, 403, "Refused", "the form's token is missing or stale: reload the page and decide again"
        )
    return await run_in_threadpool(_decide, request, fields)


def create_app(
    instance: DagsterInstance,
    *,
    server: Webserver,
    user_header: str | None = None,
    public_url: str | None = None,
    hosts: Collection[str] = (),
) -> Starlette:
    """The inbox app on `instance`: reviewers named by `user_header` (an auth proxy sets it) or, without one,
    by the name they type (self-declared); resumes launched through `server`. It answers only to the loopback
    names, `public_url`'s host and `hosts` (any other `Host` header: 400), so a page whose own name resolves to
    the inbox's address (DNS rebinding) cannot read it or pass its same-site checks."""
    public_host = urlsplit(public_url).hostname if public_url else None
    allowed = sorted(
        {*LOOPBACK_HOSTS, *(host_name(h) for h in hosts), *([host_name(public_host)] if public_host else [])}
    )
    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/gates/{run_id}/{gate}", gate_page, methods=["GET"]),
            Route("/gates/{run_id}/{gate}/decide", decide_route, methods=["POST"]),
        ],
        middleware=[Middleware(_SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
    )
    app.state.inbox = Inbox(instance=instance, user_header=user_header, server=server, public_url=public_url)
    return app
