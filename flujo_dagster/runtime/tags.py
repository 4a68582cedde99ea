"""Reading records from run tags, which anyone who can launch a run or edit its tags writes: every reader here is
a total function. A tag value is checked cheaply first (text, size, UTF-8), then parsed by the
record's model; anything malformed is the reason it is ignored (a short text), never an exception.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

__all__ = [
    "MAX_RECORD_TAG_CHARS",
    "MAX_REASON_CHARS",
    "MAX_TAG_KEY_CHARS",
    "cut",
    "problems",
    "read_record",
    "tag_key_problem",
]

MAX_RECORD_TAG_CHARS = 64 * 1024
"""The longest request or decision tag read (characters); a longer one is ignored unread. Room for a reviewer's
edited draft; parsing one this long takes well under a millisecond."""
MAX_TAG_KEY_CHARS = 512
"""The longest tag key whose gate is read (`flujo/awaiting/<gate>`, `flujo/decision/<gate>/<reviewer>`)."""
MAX_REASON_CHARS = 500
"""The longest reason a record is ignored for, as reported (audit trail, logs, `pending`)."""
_PROBLEMS_SHOWN = 3

Record = TypeVar("Record", bound=BaseModel)


def cut(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text`, cut to `limit` characters (saying how long it was)."""
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text)} characters)"


def _shown(value: object) -> str:
    """A bad input as a reason shows it: its repr, cut short."""
    try:
        shown = repr(value if not isinstance(value, str) else value[:60])
    except ValueError:  # an integer too long for `repr` (Python's digit limit)
        return f"a {type(value).__name__} too long to show"
    return shown if len(shown) <= 60 else shown[:57] + "..."


def problems(exc: ValidationError) -> str:
    """What is wrong with a record, one clause per problem (the first few; a bad input shown cut short)."""
    found = []
    errors = exc.errors(include_url=False)
    for error in errors[:_PROBLEMS_SHOWN]:
        where = ".".join(map(str, error["loc"]))
        if error["type"] == "json_invalid":
            found.append(f"not JSON ({error.get('ctx', {}).get('error', error['msg'])})")
        elif error["type"] == "model_type":
            found.append("not a JSON object")
        elif error["type"] == "missing":
            found.append(f"{where}: missing")
        else:
            found.append(f"{where}: {error['msg'].lower()}, got {_shown(error['input'])}")
    if len(errors) > _PROBLEMS_SHOWN:
        found.append(f"and {len(errors) - _PROBLEMS_SHOWN} more problem(s)")
    return cut("; ".join(found))


def _shape_problem(raw: object, limit: int) -> str | None:
    """Why `raw` is not worth parsing (not text, too long, not UTF-8), or None. Its shape (an object, how deep)
    is the parser's: it refuses nesting deeper than 200 levels and numbers longer than about 4300 digits."""
    if not isinstance(raw, str):
        return f"not text (a {type(raw).__name__})"
    if len(raw) > limit:
        return f"{len(raw)} characters, over the {limit} a record tag may hold"
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text (it holds a lone surrogate)"
    return None


def read_record(
    model: type[Record], raw: object, *, context: object = None, limit: int = MAX_RECORD_TAG_CHARS
) -> Record | str:
    """The record of `model` in tag value `raw`, or what is wrong with it; never raises. The cheap checks (text,
    size, UTF-8) come first; the model's JSON parser bounds nesting and number sizes."""
    problem = _shape_problem(raw, limit)
    if problem is not None:
        return problem
    assert isinstance(raw, str)  # checked above
    try:
        return model.model_validate_json(raw, context=context)
    except ValidationError as exc:
        return problems(exc)


def tag_key_problem(key: str) -> str | None:
    """Why a tag key is not read as naming a gate (too long, not UTF-8), or None."""
    if len(key) > MAX_TAG_KEY_CHARS:
        return f"its key is {len(key)} characters, over the {MAX_TAG_KEY_CHARS} a gate's tag key may have"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "its key is not UTF-8 text"
    return None
