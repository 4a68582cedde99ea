"""Who the reviewer is: the value of a header an auth proxy sets (`FLUJO_DAGSTER_INBOX_USER_HEADER`; the proxy
must strip it from clients' requests), or, without one (local mode), the name the reviewer types, recorded as
self-declared. Names are size-capped and must be printable; they are compared as `normal_name` compares them."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_NAME_CHARS", "SELF_DECLARED", "Reviewer", "from_form", "from_header"]

MAX_NAME_CHARS = 200
SELF_DECLARED = "self-declared"


@dataclass(frozen=True)
class Reviewer:
    """A reviewer's name and how it was established (`Decision.identity`)."""

    name: str
    identity: str


def _name_problem(name: str) -> str | None:
    """Why `name` cannot name a reviewer, or None."""
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"it is longer than {MAX_NAME_CHARS} characters"
    if any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in name):
        return "it holds control characters"
    return None


def from_header(values: Sequence[str], header: str) -> Reviewer | str:
    """The reviewer named by the `values` of `header` in a request, or why there is none (the page says it,
    with 401): the header must be there exactly once (a proxy that appends rather than replaces it would leave
    a client's value beside its own)."""
    if not values:
        return f"the request carries no {header} header: open the inbox through the sign-in proxy"
    if len(values) > 1:
        return f"the request carries the {header} header {len(values)} times: the proxy must replace it"
    name = values[0].strip()
    problem = _name_problem(name)
    if problem is not None:
        return f"the {header} header names no reviewer: {problem}"
    return Reviewer(name=name, identity=f"header {header}")


def from_form(fields: Mapping[str, str], field: str = "name") -> Reviewer | str:
    """The reviewer a local-mode form names (self-declared), or why it names none."""
    name = fields.get(field, "").strip()
    problem = _name_problem(name)
    if problem is not None:
        return f"your name: {problem}"
    return Reviewer(name=name, identity=SELF_DECLARED)
