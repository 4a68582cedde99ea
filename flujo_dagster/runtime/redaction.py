"""Known secrets and credentials redacted, and sizes bounded, in what a call record stores: pure, total functions
over JSON values (docs/calls.md#what-is-redacted).

Redaction comes first and cutting second, so that a cut never leaves the tail of a secret unrecognised: a string
longer than `PRE_CUT` times the text bound is first shortened to that many, then redacted, then cut to its bound.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

__all__ = ["MIN_SECRET", "PRE_CUT", "REDACTED", "Bounds", "Cuts", "Redactor", "clean"]

REDACTED = "[REDACTED]"
"""What a secret or credential is replaced by."""
MIN_SECRET = 8
"""The shortest literal secret (an environment variable's value, a key given in code) replaced wherever it occurs;
a shorter value would match ordinary text."""
PRE_CUT = 16
"""A string is shortened to `PRE_CUT` times its bound before redaction (the rest is cut anyway)."""

# whole tokens of a known shape (provider keys, cloud keys, GitHub and Slack tokens, JWTs)
_TOKENS = re.compile(
    "|".join(
        (
            r"sk-ant-[A-Za-z0-9_\-]{8,}",
            r"\bsk-[A-Za-z0-9_\-]{16,}",
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            r"\bgh[pousr]_[A-Za-z0-9]{20,}",
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bAIza[0-9A-Za-z_\-]{30,}",
            r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
            r"\bgsk_[A-Za-z0-9]{20,}",
            r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
        )
    )
)
# a name, its separator, then the value to redact (group 2)
_PAIRS = (
    re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9\-._~+/]{8,}=*)"),
    re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)([^\"'\r\n\[]+)"),
    re.compile(
        r"(?i)((?:api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|client[_-]?secret|secret|passw(?:or)?d|pwd|"
        r"token|private[_-]?key)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}\]\[)]+)"
    ),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]{0,20}://[^/\s:@\[]{1,200}:)([^/\s@\[]{1,200})(?=@)"),
)

# the name of a field whose value is a credential (a tool's `{"password": ...}`, a header `X-Api-Key`)
_CREDENTIAL_NAME = re.compile(
    r"(?i)(?:.*[_\-.])?(?:api[_\-]?key|apikey|access[_\-]?key(?:[_\-]?id)?|client[_\-]?secret|secret|"
    r"passw(?:or)?d|pwd|token|private[_\-]?key|authorization|credentials?|cookie)"
)

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def _credential_name(key: object) -> bool:
    """Whether a field named `key` holds a credential (`refresh_token`, `X-Api-Key`, `accessToken`)."""
    return _CREDENTIAL_NAME.fullmatch(_CAMEL.sub(r"\1_\2", str(key))) is not None


@dataclass(frozen=True)
class Bounds:
    """How much a call record keeps: characters per string, entries per list or object, nesting depth, bytes of
    one record's JSON, and bytes of one op's file of records."""

    text: int = 4000
    items: int = 200
    depth: int = 24
    record: int = 64 * 1024
    file: int = 8 * 1024 * 1024


@dataclass
class Cuts:
    """What bounding cut and redaction replaced in one record (counts, and notes in words)."""

    texts: int = 0
    items: int = 0
    depth: int = 0
    redacted: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """What was cut, in words (empty when nothing was)."""
        said = [
            f"{self.texts} text(s) cut to their bound" if self.texts else "",
            f"{self.items} list or object entries left out" if self.items else "",
            f"{self.depth} value(s) nested too deep left out" if self.depth else "",
        ]
        return [s for s in said if s] + self.notes


def _base64_cores(secret: bytes) -> list[str]:
    """What base64 (standard and URL-safe) of any text holding `secret` certainly contains, for each of the three
    offsets the secret can start at: its encoding without the characters that also depend on the bytes around."""
    cores = []
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(bytes(offset) + secret).decode().rstrip("=")
            start = (4 * offset + 2) // 3
            end = (4 * (offset + len(secret))) // 3  # the characters made only of the secret's bits
            cores.append(text[start:end])
    return cores


def _variants(secret: str) -> set[str]:
    """`secret` as text commonly carries it: itself, percent-encoded, JSON-escaped, and inside base64."""
    found = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], *_base64_cores(secret.encode())}
    return {v for v in found if len(v) >= MIN_SECRET}


class Redactor:
    """Replaces known secrets in text: the literal values given (environment variables' values, keys given in
    code; at least `MIN_SECRET` characters) and their percent-encoded, JSON-escaped and base64 forms, then tokens
    of a known shape and the values of credential pairs."""

    def __init__(self, secrets: Iterable[object] = ()) -> None:
        given = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET}
        self.given = tuple(sorted(given))
        kept = {v for s in given for v in _variants(s)}
        self.secrets = tuple(sorted(kept, key=len, reverse=True))  # the longest first: one may hold another

    def with_secrets(self, secrets: Iterable[object]) -> Redactor:
        """This redactor with more literal secrets."""
        return Redactor((*self.given, *secrets))

    def redact(self, text: str) -> tuple[str, int]:
        """`text` with every known secret replaced by `REDACTED`, and how many were."""
        count = 0
        for secret in self.secrets:
            if secret in text:
                count += text.count(secret)
                text = text.replace(secret, REDACTED)
        text, found = _TOKENS.subn(REDACTED, text)
        count += found
        for pattern in _PAIRS:
            text, found = pattern.subn(lambda m: m.group(1) + REDACTED, text)
            count += found
        return text, count


def _text(value: str, redactor: Redactor, limit: int, cuts: Cuts) -> str:
    shown, found = redactor.redact(value[: limit * PRE_CUT])
    cuts.redacted += found
    if len(value) > limit * PRE_CUT or len(shown) > limit:
        cuts.texts += 1
        return f"{shown[:limit]}... [cut: {len(value)} characters, {limit} kept]"
    return shown


def clean(value: object, redactor: Redactor, bounds: Bounds, cuts: Cuts, *, text: int | None = None) -> object:
    """`value` (a JSON value: None, bool, int, float, str, lists, objects with string keys) with every string
    redacted (a string or number under a credential's name, `password` or `X-Api-Key`, whatever it holds) and
    cut to `text` characters (default `bounds.text`), lists and objects cut to `bounds.items` entries and nesting
    to `bounds.depth`; what was cut is counted in `cuts`. Anything else becomes its type's name. Never raises."""
    return _clean(value, redactor, bounds, cuts, bounds.text if text is None else text, 0)


def _clean(value: object, redactor: Redactor, bounds: Bounds, cuts: Cuts, limit: int, depth: int) -> object:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value, redactor, limit, cuts)
    if depth >= bounds.depth:
        cuts.depth += 1
        return "[cut: nested too deep]"
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= bounds.items:
                cuts.items += len(value) - bounds.items
                out["[cut]"] = f"{len(value) - bounds.items} more entries"
                break
            name = _text(str(key), redactor, min(limit, 200), cuts)
            if _credential_name(key) and isinstance(item, str | int) and not isinstance(item, bool):
                cuts.redacted += 1  # the value of a credential field, whatever its shape
                out[name] = REDACTED
                continue
            out[name] = _clean(item, redactor, bounds, cuts, limit, depth + 1)
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = [_clean(v, redactor, bounds, cuts, limit, depth + 1) for v in value[: bounds.items]]
        if len(value) > bounds.items:
            cuts.items += len(value) - bounds.items
            items.append(f"[cut: {len(value) - bounds.items} more items]")
        return items
    return f"[{type(value).__name__}]"
