"""Cross-site request forgery defences of the inbox's one writing route: a double-submit token (the form carries
an HMAC of the nonce in an HttpOnly, SameSite=Strict cookie, keyed with a random key of this process), and a
request from another site (`Origin`, `Sec-Fetch-Site`) refused before anything is read."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["COOKIE", "FIELD", "Csrf", "cross_site"]

COOKIE = "flujo_inbox_csrf"
FIELD = "csrf"
_NONCE = re.compile(r"[A-Za-z0-9_-]{32,64}")
_TOKEN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Csrf:
    """Makes and checks form tokens: `token(nonce)` is the HMAC-SHA256 of the cookie's nonce under `key`."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @staticmethod
    def valid_nonce(nonce: str | None) -> bool:
        """Whether a cookie's value is a nonce this app could have set."""
        return nonce is not None and _NONCE.fullmatch(nonce) is not None

    @staticmethod
    def new_nonce() -> str:
        """A fresh cookie nonce."""
        return secrets.token_urlsafe(32)

    def token(self, nonce: str) -> str:
        """The form token that goes with cookie `nonce`."""
        return hmac.new(self.key, nonce.encode(), hashlib.sha256).hexdigest()

    def check(self, nonce: str | None, token: str | None) -> bool:
        """Whether the form's `token` goes with the cookie's `nonce` (constant time)."""
        if not self.valid_nonce(nonce) or token is None or _TOKEN.fullmatch(token) is None:
            return False
        assert nonce is not None
        return hmac.compare_digest(self.token(nonce), token)


def cross_site(origin: str | None, fetch_site: str | None, hosts: Collection[str]) -> str | None:
    """Why a writing request comes from another site, or None: `Sec-Fetch-Site: cross-site` (or same-site: a
    sibling subdomain is another site here), or an `Origin` whose host is not one of `hosts` (the request's own
    `Host` and the inbox's public URL). A request without either header (a non-browser client) passes to the
    token check."""
    if fetch_site is not None and fetch_site.strip().lower() not in {"same-origin", "none"}:
        return f"the request came from another site (Sec-Fetch-Site: {fetch_site[:40]})"
    if origin is None:
        return None
    try:
        parts = urlsplit(origin.strip()[:300])
    except ValueError:  # a malformed URL (an unclosed IPv6 bracket)
        return f"the request came from an unreadable origin ({origin[:100]!r})"
    if origin.strip() == "null" or parts.scheme not in {"http", "https"} or parts.netloc.lower() not in hosts:
        return f"the request came from another origin ({origin[:100]})"
    return None
