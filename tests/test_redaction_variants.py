"""A known secret is redacted in the encodings a tool, a prompt or an error commonly carries it in: base64
(standard and URL-safe, at any offset inside a longer encoded text), percent-encoded in a URL, JSON-escaped."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from flujo_dagster.runtime.redaction import REDACTED, Bounds, Cuts, Redactor, clean

SECRET = 'Zq9-xY7!wK3"pL0/mN5+r?~\\tail'


@pytest.mark.parametrize("prefix", [b"", b"u:", b"user:"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_a_secret_in_base64_is_redacted(prefix: bytes, encode: object) -> None:
    blob = encode(prefix + SECRET.encode() + b" and more text after it").decode()  # type: ignore[operator]
    shown, found = Redactor([SECRET]).redact(f"Authorisation header value {blob} was sent")
    assert found >= 1 and REDACTED in shown
    core = encode(SECRET.encode()).decode()[4:-4]  # type: ignore[operator]
    assert blob not in shown and all(shown.find(core[i : i + 8]) < 0 for i in range(0, len(core) - 8, 4))


def test_a_secret_percent_encoded_or_json_escaped_is_redacted() -> None:
    text = f"GET https://x.example/v1?k={quote(SECRET, safe='')} body={json.dumps({'k': SECRET})}"
    shown, found = Redactor([SECRET]).redact(text)
    assert found == 2 and quote(SECRET, safe="") not in shown and json.dumps(SECRET)[1:-1] not in shown
    assert shown.startswith("GET https://x.example/v1?k=" + REDACTED)


def test_a_credential_named_field_of_tool_args_or_returns_is_redacted() -> None:
    args = {
        "password": "hunter2hunter2",
        "api_key": "k-1234567890abcdef",
        "headers": {"X-Api-Key": "abcdefgh12345", "Authorization": "Basic dXNlcjpwYXNz"},
        "refresh_token": "r0t4t3d-v4lu3",
        "client_secret": 123456789,
        "accessToken": "eyJhbGciOi-not-a-jwt",
        "maxTokens": 100,
        "max_tokens": 100,
        "input_tokens": 7,
        "secret_santa": "kept",
        "query": "what is a password?",
    }
    cuts = Cuts()
    shown = clean({"args": args}, Redactor(), Bounds(), cuts)
    assert shown == {
        "args": {
            "password": REDACTED,
            "api_key": REDACTED,
            "headers": {"X-Api-Key": REDACTED, "Authorization": REDACTED},
            "refresh_token": REDACTED,
            "client_secret": REDACTED,
            "accessToken": REDACTED,
            "maxTokens": 100,
            "max_tokens": 100,
            "input_tokens": 7,
            "secret_santa": "kept",
            "query": "what is a password?",
        }
    }
    assert cuts.redacted == 7
