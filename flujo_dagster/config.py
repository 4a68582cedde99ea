"""Every environment variable and pyproject.toml setting flujo_dagster reads, read here and nowhere else
(docs/configuration.md lists them). Each accessor reads when it is called, names the variable and its value in
its errors, and lets an explicit argument win over the environment."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from flujo_dagster.dsl.durations import duration
from flujo_dagster.errors import ConfigurationError
from flujo_dagster.pricing.prices import Price, prices_from_table

__all__ = [
    "APPROVALS_INTERVAL_ENV",
    "DAGSTER_HOME_ENV",
    "DECISION_SECRET_ENV",
    "DEFAULT_APPROVALS_INTERVAL",
    "DEFAULT_WEBSERVER_URL",
    "INBOX_URL_ENV",
    "INBOX_USER_HEADER_ENV",
    "PRICING_TABLE",
    "PROVIDER_KEY_ENVS",
    "STORAGE_SECRET_ENV",
    "WEBSERVER_HEADERS_ENV",
    "WEBSERVER_TOKEN_ENV",
    "WEBSERVER_URL_ENV",
    "approvals_interval",
    "dagster_home",
    "decision_secret",
    "find_pyproject",
    "inbox_gate_url",
    "inbox_url",
    "inbox_user_header",
    "known_secrets",
    "pyproject_prices",
    "shown_url",
    "storage_secret",
    "webserver_headers",
    "webserver_url",
]

DECISION_SECRET_ENV = "FLUJO_DAGSTER_DECISION_SECRET"
"""The secret that signs approval decisions (`ApprovalSettings(require_signed_decisions=True)`)."""
STORAGE_SECRET_ENV = "FLUJO_DAGSTER_STORAGE_SECRET"
"""The secret that keys the content hash (HMAC-SHA256) of every file the flujo IO manager stores."""
WEBSERVER_URL_ENV = "FLUJO_DAGSTER_WEBSERVER_URL"
"""The Dagster webserver the approvals sensor resumes parked runs through."""
WEBSERVER_TOKEN_ENV = "FLUJO_DAGSTER_WEBSERVER_TOKEN"
"""A token the approvals sensor sends to the webserver as `Authorization: Bearer <token>` (an auth proxy)."""
WEBSERVER_HEADERS_ENV = "FLUJO_DAGSTER_WEBSERVER_HEADERS"
"""HTTP headers (a JSON object of names to values) the approvals sensor sends to the webserver."""
INBOX_URL_ENV = "FLUJO_DAGSTER_INBOX_URL"
"""The public URL of the reviewers' inbox (`flujo-dagster inbox`): parked runs link to their gates' pages there."""
INBOX_USER_HEADER_ENV = "FLUJO_DAGSTER_INBOX_USER_HEADER"
"""The HTTP header an auth proxy in front of the reviewers' inbox names the signed-in reviewer in."""
APPROVALS_INTERVAL_ENV = "FLUJO_DAGSTER_APPROVALS_INTERVAL_S"
"""How often the approvals sensor runs, in whole seconds."""
DAGSTER_HOME_ENV = "DAGSTER_HOME"
"""Dagster's own: the instance directory `run_pipeline` and the CLI use."""
PROVIDER_KEY_ENVS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "CO_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENROUTER_API_KEY",
    "HF_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_OPENAI_API_KEY",
    "LOGFIRE_TOKEN",
)
"""Where pydantic-ai's providers (and their clouds) read keys by default: read only to redact call records."""
PRICING_TABLE = "tool.flujo_dagster.pricing"
"""The pyproject.toml table of price overrides."""

DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"  # what `dagster dev` serves
DEFAULT_APPROVALS_INTERVAL = timedelta(seconds=30)


def _env(name: str) -> str | None:
    """The value of environment variable `name`; None when it is unset or empty."""
    return os.environ.get(name) or None


def known_secrets() -> list[str]:
    """The values of the secrets flujo_dagster and pydantic-ai's providers read from the environment (the decision
    and storage secrets, the webserver token, `PROVIDER_KEY_ENVS`) that are set: redacted from call records."""
    names = (DECISION_SECRET_ENV, STORAGE_SECRET_ENV, WEBSERVER_TOKEN_ENV, *PROVIDER_KEY_ENVS)
    return [value for value in map(_env, names) if value]


def decision_secret(env: str = DECISION_SECRET_ENV) -> str | None:
    """The decision-signing secret in environment variable `env` (default `FLUJO_DAGSTER_DECISION_SECRET`), or
    None when it is unset or empty. Read where it is used; never stored."""
    return _env(env)


def storage_secret() -> str | None:
    """The secret in `FLUJO_DAGSTER_STORAGE_SECRET` that keys the stored files' content hashes (HMAC-SHA256), or
    None when it is unset or empty (plain SHA-256). Read at every write and read; never stored."""
    return _env(STORAGE_SECRET_ENV)


def dagster_home() -> str | None:
    """`DAGSTER_HOME`, or None when it is unset or empty."""
    return _env(DAGSTER_HOME_ENV)


def webserver_url(given: str | None = None) -> str:
    """The approvals sensor's webserver URL (no trailing slash): `given`, else `FLUJO_DAGSTER_WEBSERVER_URL`,
    else http://127.0.0.1:3000. `ConfigurationError` names a value that is not an http(s) URL and its source."""
    source = "webserver_url" if given is not None else WEBSERVER_URL_ENV
    url = given if given is not None else _env(WEBSERVER_URL_ENV) or DEFAULT_WEBSERVER_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{source}={shown_url(url)!r} is not an http(s) URL of the Dagster webserver")
    return url.rstrip("/")


def inbox_url() -> str | None:
    """The reviewers' inbox public URL (no trailing slash) from `FLUJO_DAGSTER_INBOX_URL`, or None when unset.
    `ConfigurationError` names a value that is not an http(s) URL."""
    url = _env(INBOX_URL_ENV)
    if url is None:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{INBOX_URL_ENV}={shown_url(url)!r} is not an http(s) URL of the reviewers' inbox")
    return url.rstrip("/")


def inbox_gate_url(run_id: str, gate: str) -> str | None:
    """The inbox page of gate `gate` of parked run `run_id` (`{inbox}/gates/{run_id}/{gate}`, each part
    percent-encoded), or None when no inbox URL is configured."""
    base = inbox_url()
    if base is None:
        return None
    return f"{base}/gates/{quote(run_id, safe='')}/{quote(gate, safe='')}"


def shown_url(url: str) -> str:
    """`url` as it may be shown (descriptions, errors, logs): its user info (`user:password@`, up to the last `@`
    of the host part) replaced by `***@`, and its query and fragment (they may carry a token) by `?***`."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"***@{host}" if at else host
    hidden = "?***" if parts.query or parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + hidden


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")  # visible ASCII, inner spaces


def webserver_headers() -> dict[str, str]:
    """The HTTP headers the approvals sensor sends to the webserver: `FLUJO_DAGSTER_WEBSERVER_HEADERS` (a JSON
    object of header names to values) and, with `FLUJO_DAGSTER_WEBSERVER_TOKEN`, `Authorization: Bearer <token>`.
    Read at every sensor tick; never stored. `ConfigurationError` names the variable and the header, never a
    value (they are credentials)."""
    headers: dict[str, str] = {}
    raw = _env(WEBSERVER_HEADERS_ENV)
    if raw is not None:
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise ConfigurationError(
                f"{WEBSERVER_HEADERS_ENV} is not JSON: set it to an object of header names to values, e.g. "
                '{"X-Auth": "..."}'
            ) from None
        if not isinstance(parsed, dict):
            raise ConfigurationError(f"{WEBSERVER_HEADERS_ENV} must be a JSON object of header names to values")
        for name, value in parsed.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigurationError(f"{WEBSERVER_HEADERS_ENV}: {name[:40]!r} is not an HTTP header name")
            if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
                raise ConfigurationError(
                    f"{WEBSERVER_HEADERS_ENV}: the value of header {name} must be a non-empty string of visible "
                    "ASCII characters (value not shown)"
                )
            headers[name] = value
    token = _env(WEBSERVER_TOKEN_ENV)
    if token is not None:
        if any(n.lower() == "authorization" for n in headers):
            raise ConfigurationError(
                f"both {WEBSERVER_TOKEN_ENV} and an Authorization header in {WEBSERVER_HEADERS_ENV} are set: keep one"
            )
        if not _HEADER_VALUE.fullmatch(token) or " " in token:
            raise ConfigurationError(f"{WEBSERVER_TOKEN_ENV} must be visible ASCII without spaces (value not shown)")
        headers["Authorization"] = f"Bearer {token}"
    return headers


def inbox_user_header(given: str | None = None) -> str | None:
    """The header naming the reviewer in the inbox (`X-Forwarded-User`, set by an auth proxy that strips it from
    clients): `given`, else `FLUJO_DAGSTER_INBOX_USER_HEADER`, else None (local mode: reviewers type their name,
    recorded as self-declared). `ConfigurationError` names a value that is not an HTTP header name."""
    source = "--user-header" if given is not None else INBOX_USER_HEADER_ENV
    header = given if given is not None else _env(INBOX_USER_HEADER_ENV)
    if header is None:
        return None
    if len(header) > 100 or not _HEADER_NAME.fullmatch(header):
        raise ConfigurationError(f"{source}={header[:100]!r} is not an HTTP header name (e.g. X-Forwarded-User)")
    return header


def approvals_interval(given: timedelta | None = None) -> timedelta:
    """How often the approvals sensor runs: `given`, else `FLUJO_DAGSTER_APPROVALS_INTERVAL_S` (whole seconds),
    else 30 s. At least 1 s and whole seconds (a Dagster sensor interval is an int); `ConfigurationError` names
    a bad value and its source. Dagster's daemon evaluates sensors at most every 5 s, so less means "every loop"."""
    if given is not None:
        interval = duration(given, "approvals_interval", positive=True)
        if interval.total_seconds() < 1 or interval.total_seconds() % 1:
            raise ConfigurationError(f"approvals_interval={interval!r} must be a whole number of seconds, at least 1")
        return interval
    raw = _env(APPROVALS_INTERVAL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_APPROVALS_INTERVAL
    try:
        seconds = int(raw)
    except ValueError:
        raise ConfigurationError(f"{APPROVALS_INTERVAL_ENV}={raw!r} is not a whole number of seconds") from None
    if seconds < 1:
        raise ConfigurationError(f"{APPROVALS_INTERVAL_ENV}={raw!r} must be a whole number of seconds, at least 1")
    return timedelta(seconds=seconds)


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml in `start` (the working directory by default) or a parent directory."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def pyproject_prices(path: Path | None) -> dict[str, Price]:
    """Price overrides from `[tool.flujo_dagster.pricing]` of `path` (none when the file or table is absent)."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read [{PRICING_TABLE}]: {exc}") from exc
    table = data.get("tool", {}).get("flujo_dagster", {}).get("pricing", {})
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{path}: [{PRICING_TABLE}] must be a table of models")
    return prices_from_table(table, source=f"{path} [{PRICING_TABLE}]")
