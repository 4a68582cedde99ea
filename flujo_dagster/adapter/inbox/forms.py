"""The inbox's form bodies and edit fields, parsed by total functions: a body is capped, strict UTF-8 and
`application/x-www-form-urlencoded`; an edited value is text for a key that holds text and JSON otherwise, valid
for the JSON Schema of the key's type that the gate recorded (`schemas.py`), or, without one, of the current
value's kind. Every failure is a message for the reviewer, never an exception."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from flujo_dagster.adapter.inbox.render import clean
from flujo_dagster.adapter.inbox.schemas import EditSchema

__all__ = [
    "FORM_TYPE",
    "MAX_BODY_BYTES",
    "MAX_FIELDS",
    "Edit",
    "EditField",
    "edit_field",
    "parse_edits",
    "parse_form",
]

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_BODY_BYTES = 256 * 1024
"""The largest form body the inbox reads (larger: 413, nothing read further, nothing recorded)."""
MAX_FIELDS = 200
_NO_VALUE = object()


def parse_form(body: bytes) -> dict[str, str] | str:
    """The fields of an urlencoded form `body`, or why it is refused (not UTF-8, malformed, a field twice, too
    many fields). The caller caps the body at `MAX_BODY_BYTES` before."""
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return "the form is not UTF-8"
    if not text:
        return {}
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (ValueError, UnicodeDecodeError):
        return "the form is malformed (not application/x-www-form-urlencoded, or too many fields)"
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            return f"the form names field {name[:40]!r} twice"
        fields[name] = value
    return fields


def _kind(value: object) -> str:
    """The JSON kind of a value, as the reviewer is told it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a JSON list"
    if isinstance(value, dict):
        return "a JSON object"
    return "JSON"


def _fits(current: object, edited: object) -> bool:
    """Whether `edited` is a JSON value of the same kind as `current` (a number may replace a whole number)."""
    if current is _NO_VALUE or current is None:
        return True
    if isinstance(current, bool) or isinstance(edited, bool):
        return isinstance(current, bool) and isinstance(edited, bool)
    if isinstance(current, float):
        return isinstance(edited, int | float) and (not isinstance(edited, float) or math.isfinite(edited))
    if isinstance(current, int):
        return isinstance(edited, int)
    return type(current) is type(edited)


@dataclass(frozen=True)
class EditField:
    """An editable key on the form: its name, whether it takes text (the key holds text) or JSON, the text the
    field is prefilled with, what kind of value it takes (for the label), and the JSON Schema of its type when
    the gate recorded a usable one."""

    key: str
    text_mode: bool
    prefill: str
    kind: str
    current: object = _NO_VALUE
    schema: EditSchema | None = None

    @property
    def name(self) -> str:
        """The form field's name."""
        return f"edit.{self.key}"


def edit_field(key: str, shown: Mapping[str, object] | None, schema: EditSchema | None = None) -> EditField:
    """The form field of editable key `key`, prefilled with its current value (the shown values, when they
    could be read: else an empty JSON field) without control characters (an unchanged field is no edit), checked
    with `schema` when there is one."""
    if shown is None or key not in shown:
        return EditField(key=key, text_mode=False, prefill="", kind="JSON", schema=schema)
    current = shown[key]
    if isinstance(current, str):
        return EditField(key=key, text_mode=True, prefill=_uncut(current), kind="text", current=current, schema=schema)
    prefill = _uncut(json.dumps(current, ensure_ascii=False, indent=2))
    return EditField(key=key, text_mode=False, prefill=prefill, kind=_kind(current), current=current, schema=schema)


def _uncut(text: str) -> str:
    """`text` without control characters, whole (a form posting more than `MAX_BODY_BYTES` is refused)."""
    return clean(text, limit=len(text))


def _same_text(a: str, b: str) -> bool:
    """Whether two field texts are equal once line ends are normalised (browsers send CRLF)."""
    return a.replace("\r\n", "\n") == b.replace("\r\n", "\n")


@dataclass(frozen=True)
class Edit:
    """The edits of a form: the values changed from the prefilled ones, and each refused field's reason."""

    values: dict[str, object]
    errors: dict[str, str]


def _problem(edit: EditField, value: object) -> str | None:
    """Why `value` does not fit `edit`'s key: its schema's errors (joined), or, without a schema that applies,
    a value of another JSON kind than the current one (a text field's text always fits its kind)."""
    problems = edit.schema.problems(value) if edit.schema is not None else None
    if problems is not None:
        return "; ".join(problems) or None
    if edit.text_mode or _fits(edit.current, value):
        return None
    return f"{edit.key} takes {edit.kind}, not {_kind(value)}"


def parse_edits(fields: Mapping[str, str], edits: list[EditField]) -> Edit:
    """The edited values of `fields`: a field whose text is unchanged is no edit; a text field's text is the
    value; a JSON field must hold JSON; each value must be valid for its key's schema (or, without one, of the
    current value's kind)."""
    values: dict[str, object] = {}
    errors: dict[str, str] = {}
    for edit in edits:
        given = fields.get(edit.name)
        if given is None or _same_text(given, edit.prefill):
            continue
        if edit.text_mode:
            value: object = given.replace("\r\n", "\n")
        else:
            try:
                value = json.loads(given)
            except (ValueError, RecursionError):  # a value nested deeper than Python parses is no value either
                errors[edit.key] = f"{edit.key} takes JSON ({edit.kind}); this is not valid JSON"
                continue
        problem = _problem(edit, value)
        if problem is not None:
            errors[edit.key] = problem
            continue
        values[edit.key] = value
    return Edit(values=values, errors=errors)
