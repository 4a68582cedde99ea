"""The channel to the Dagster webserver's GraphQL API through which the `flujo_approvals` sensor launches resumes:
gql over requests (what dagster-graphql's `DagsterGraphQLClient` builds on; its re-execution is not public), with
configurable headers for an auth proxy, every credential redacted from what it reports, and the launched run
checked against the instance before anyone is told it was resumed."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from dagster import DagsterInstance, DagsterRun

# not exported by name in Dagster 1.13: the tags Dagster itself leaves out of a re-execution's inherited tags
from dagster._core.storage.tags import TAGS_TO_MAYBE_OMIT_ON_RETRY
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportError, TransportProtocolError, TransportQueryError, TransportServerError
from gql.transport.requests import RequestsHTTPTransport

from flujo_dagster.config import WEBSERVER_HEADERS_ENV, WEBSERVER_TOKEN_ENV, WEBSERVER_URL_ENV, shown_url
from flujo_dagster.errors import ApprovalError
from flujo_dagster.names import RUN_COST_TAGS

__all__ = ["Webserver", "launch_reexecution"]

_RESULT_FIELDS = """
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
    ... on UnauthorizedError { message }
    ... on RunConflict { message }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on NoModeProvidedError { message }
"""
_FROM_FAILURE = f"""
mutation Resume($params: ReexecutionParams!) {{
  launchRunReexecution(reexecutionParams: $params) {{ {_RESULT_FIELDS} }}
}}
"""
_STEPS = f"""
mutation Resume($params: ExecutionParams!) {{
  launchRunReexecution(executionParams: $params) {{ {_RESULT_FIELDS} }}
}}
"""
_NO_PROXIES = {"http": None, "https": None}  # the webserver is reached directly, never through an env proxy
_SHOWN_CHARS = 300  # of a server's answer quoted in an error
_MAX_RUN_ID = 64
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*@")  # user:password@ in any URL of a text


@dataclass(frozen=True, repr=False)
class Webserver:
    """The Dagster webserver to launch resumes through: its URL (credentials in it, `http://user:pass@host`, are
    sent as HTTP basic auth) and the HTTP headers to send (an auth proxy's token). Never shown as given: `shown` and
    `redact` hide every credential; `repr` shows no header value."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: int = 30

    @property
    def shown(self) -> str:
        """The URL without its credentials."""
        return shown_url(self.url)

    def __repr__(self) -> str:
        return f"Webserver({self.shown!r}, headers={sorted(self.headers)})"

    def secrets(self) -> list[str]:
        """Every credential this channel holds, longest first: the URL's user info and each header value."""
        parts = urlsplit(self.url)
        found = {parts.username or "", parts.password or "", *self.headers.values()}
        found |= {unquote(s) for s in found}
        found |= {v.split(" ", 1)[1] for v in self.headers.values() if " " in v}  # "Bearer <token>"
        userinfo = parts.netloc.rpartition("@")[0]
        found |= {userinfo, *userinfo.split(":", 1), parts.query, parts.fragment}
        pairs = (pair.partition("=") for pair in parts.query.split("&"))
        found |= {value for _, _, value in pairs if len(value) >= 4}  # a token in the query
        return sorted((s for s in found if s), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every credential of this channel replaced by `***`."""
        for secret in self.secrets():  # before the pattern: a password may hold an `@` the pattern stops at
            text = text.replace(secret, "***")
        return _USERINFO.sub(r"\1***@", text)


def _params(parent: DagsterRun, tags: Mapping[str, str], step_keys: Sequence[str] | None) -> tuple[str, object]:
    """The mutation and its parameters: from failure (Dagster inherits the parent's tags), or the given steps of
    the parent's job (its code location's selector, its run config and, as Dagster would, its tags)."""
    if step_keys is None:
        return _FROM_FAILURE, {
            "parentRunId": parent.run_id,
            "strategy": "FROM_FAILURE",
            "useParentRunTags": True,
            "extraTags": [{"key": k, "value": v} for k, v in tags.items()],
        }
    origin = parent.remote_job_origin
    if origin is None:
        raise ApprovalError(
            f"run {parent.run_id} was not launched in a code location, so the webserver cannot re-execute it: "
            f"resume it in process with `flujo-dagster resume {parent.run_id}`"
        )
    # the parent's cost tags measure the parent: the resume gets its own when it finishes (control/run_costs.py)
    inherited = {
        k: v for k, v in parent.tags.items() if k not in TAGS_TO_MAYBE_OMIT_ON_RETRY and k not in RUN_COST_TAGS
    }
    return _STEPS, {
        "selector": {
            "repositoryLocationName": origin.location_name,
            "repositoryName": origin.repository_origin.repository_name,
            "jobName": parent.job_name,
        },
        "runConfigData": parent.run_config,
        "stepKeys": list(step_keys),
        "executionMetadata": {
            "parentRunId": parent.run_id,
            "rootRunId": parent.root_run_id or parent.run_id,
            "tags": [{"key": k, "value": v} for k, v in {**inherited, **tags}.items()],
        },
    }


def _post(server: Webserver, query: str, params: object, run_id: str) -> dict[str, Any]:
    """The `data` of the GraphQL answer; `ApprovalError` (redacted) says what went wrong and what to check."""
    transport = RequestsHTTPTransport(
        url=f"{server.url}/graphql", headers=dict(server.headers), timeout=server.timeout_s, proxies=_NO_PROXIES
    )
    where = f"the Dagster webserver at {server.shown}"
    try:
        data = Client(transport=transport).execute(GraphQLRequest(query, variable_values={"params": params}))
    except TransportServerError as exc:
        if exc.code in (401, 403):
            hint = f"it needs credentials: set {WEBSERVER_TOKEN_ENV} or {WEBSERVER_HEADERS_ENV}"
        elif exc.code == 404:
            hint = f"it has no GraphQL API at /graphql: {WEBSERVER_URL_ENV} must be the Dagster webserver's URL"
        else:
            hint = "check the webserver's log"
        raise ApprovalError(
            server.redact(f"{where} answered HTTP {exc.code} to the request to resume run {run_id}; {hint}")
        ) from None
    except TransportQueryError as exc:
        raise ApprovalError(
            server.redact(f"{where} refused to resume run {run_id}: {str(exc)[:_SHOWN_CHARS]}")
        ) from None
    except TransportProtocolError as exc:
        raise ApprovalError(
            server.redact(
                f"the answer of {server.shown} to the request to resume run {run_id} is not GraphQL "
                f"({str(exc)[:_SHOWN_CHARS]}): {WEBSERVER_URL_ENV} must be the Dagster webserver's URL"
            )
        ) from None
    except (TransportError, requests.RequestException) as exc:  # unreachable, refused, timed out
        raise ApprovalError(
            server.redact(
                f"cannot reach {where} to resume run {run_id} ({str(exc)[:_SHOWN_CHARS]}); resumes are launched "
                f"through its GraphQL API: run the webserver there, or set {WEBSERVER_URL_ENV} (or "
                "build_definitions(webserver_url=...))"
            )
        ) from None
    return data


def launch_reexecution(
    server: Webserver,
    parent: DagsterRun,
    tags: Mapping[str, str],
    *,
    instance: DagsterInstance,
    step_keys: Sequence[str] | None = None,
) -> DagsterRun:
    """Re-execute `parent` through the webserver's GraphQL `launchRunReexecution`, with `tags` added: from failure
    (parent's tags inherited) or, with `step_keys`, exactly those steps. Returns the launched run as `instance`
    holds it: an answer naming a run that `instance` does not hold as a re-execution of `parent` (another server
    answering at the URL, another instance's webserver) is an `ApprovalError`, as is any refusal. Every error is
    redacted of the channel's credentials."""
    query, params = _params(parent, tags, step_keys)
    data = _post(server, query, params, parent.run_id)
    answer = data.get("launchRunReexecution") if isinstance(data, dict) else None
    answer = answer if isinstance(answer, dict) else {}
    kind = answer.get("__typename")
    run = answer.get("run")
    new_id = run.get("runId") if kind == "LaunchRunSuccess" and isinstance(run, dict) else None
    if not isinstance(new_id, str):
        shown = str(answer or data)[:_SHOWN_CHARS]
        raise ApprovalError(
            server.redact(f"the webserver at {server.shown} refused to resume run {parent.run_id}: {shown}")
        )
    launched = instance.get_run_by_id(new_id[:_MAX_RUN_ID]) if len(new_id) <= _MAX_RUN_ID else None
    if launched is None or launched.parent_run_id != parent.run_id or launched.job_name != parent.job_name:
        raise ApprovalError(
            server.redact(
                f"the server at {server.shown} answered that it launched run {new_id[:_MAX_RUN_ID]!r} to resume run "
                f"{parent.run_id}, but this Dagster instance holds no such re-execution of it, so run "
                f"{parent.run_id} is not marked resumed: {WEBSERVER_URL_ENV} must name the webserver of this "
                f"instance ({instance.root_directory})"
            )
        )
    return launched
