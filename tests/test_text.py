"""`printable`: what the CLI prints of text that users or models wrote carries no terminal control characters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flujo_dagster.runtime.text import printable


def test_printable_strips_escape_sequences_and_controls() -> None:
    hostile = "ok\x1b[2J\x1b]0;title\x07\rfake\x00\x7f\x9b31m\u0085end"
    assert printable(hostile) == "ok[2J]0;titlefake31mend"


def test_printable_keeps_newlines_tabs_and_unicode() -> None:
    text = "line 1\n\tline 2: café, 日本, emoji 🎉"
    assert printable(text) == text


def test_printable_drops_characters_that_reorder_or_hide_text() -> None:
    """A reviewer name `ana\u202eevil` would read as `analive`; zero-width spaces hide inside names."""
    hostile = "ana\u202eevil\u202c \u2066x\u2069 b\u200bo \ufeffc\u061c"
    assert printable(hostile) == "anaevil x bo c"
    family = "\U0001f468\u200d\U0001f469"  # the zero-width joiner of an emoji sequence stays
    assert printable(family) == family


def test_printable_replaces_lone_surrogates() -> None:
    assert printable("a\ud800b") == "a\ufffdb"
    printable("a\udfffb").encode("utf-8")  # encodable


@given(st.text())
def test_printable_is_total_and_leaves_no_control(text: str) -> None:
    out = printable(text)
    out.encode("utf-8")
    assert all(c in "\n\t" or not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) for c in out)
    assert printable(out) == out
