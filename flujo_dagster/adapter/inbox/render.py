"""A gate's shown values as HTML, like the asset previews: Markdown for text (raw HTML escaped, unsafe links
refused), a table for a list of objects, JSON otherwise; every value size-bounded and stripped of control
characters (terminal escapes included) before it is escaped."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markupsafe import Markup, escape

__all__ = ["CELL_CHARS", "TABLE_ROWS", "TEXT_CHARS", "Rendered", "clean", "render_value"]

TEXT_CHARS = 20_000
"""At most this many characters of a text or JSON value are rendered."""
TABLE_ROWS = 50
CELL_CHARS = 300
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_KEPT = frozenset("\n\t")
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def clean(text: str, limit: int = TEXT_CHARS) -> str:
    """`text` cut to `limit` characters (saying how long it was), without terminal escape sequences or other
    control and format characters (newlines and tabs kept)."""
    text = _ANSI.sub("", text)
    text = "".join(c for c in text if c in _KEPT or unicodedata.category(c) not in {"Cc", "Cf", "Cs"})
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@dataclass(frozen=True)
class Rendered:
    """One shown value as HTML: `kind` is markdown, table or json (for the page's styling)."""

    kind: str
    html: Markup


def _json_text(value: object, indent: int | None = 2) -> str:
    """`value` as JSON text (NaN and infinities as JavaScript writes them; anything else as text)."""
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str, allow_nan=True)


def _cell(value: object) -> str:
    if isinstance(value, str):
        return clean(value, CELL_CHARS)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return clean(_json_text(value, indent=None), CELL_CHARS)


def _table(rows: list[dict[str, object]]) -> Markup:
    """A table of `rows` (objects): one column per key, in the order keys first appear."""
    columns = list(dict.fromkeys(k for row in rows[:TABLE_ROWS] for k in row))
    head = Markup("").join(Markup("<th>{}</th>").format(clean(c, CELL_CHARS)) for c in columns)
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(
            Markup("").join(Markup("<td>{}</td>").format(_cell(row[c]) if c in row else "") for c in columns)
        )
        for row in rows[:TABLE_ROWS]
    )
    more = len(rows) - TABLE_ROWS
    note = Markup('<p class="note">{} more row(s) not shown</p>').format(more) if more > 0 else Markup("")
    return Markup('<div class="table"><table><thead><tr>{}</tr></thead><tbody>{}</tbody></table></div>{}').format(
        head, body, note
    )


def render_value(value: object) -> Rendered:
    """Markdown for text, a table for a non-empty list of JSON objects, JSON otherwise (all escaped)."""
    if isinstance(value, str):
        if not value:
            return Rendered("markdown", Markup("<p><em>(empty)</em></p>"))
        return Rendered("markdown", Markup(_MARKDOWN.render(clean(value))))  # html=False: raw HTML is escaped
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return Rendered("table", _table(value))
    return Rendered("json", Markup("<pre>{}</pre>").format(escape(clean(_json_text(value)))))
