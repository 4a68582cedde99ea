"""Text that came from users or models, made safe to print on a terminal: a pure, total function."""

from __future__ import annotations

__all__ = ["printable"]

_KEPT = frozenset({"\n", "\t"})
_CONTROLS = [c for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in _KEPT]
_SURROGATES = range(0xD800, 0xE000)
# invisible format characters that reorder or hide text (bidi embeddings, overrides and isolates, zero-width spaces
# and marks, the word joiner, the BOM): a name or preview holding them can read as something else
_INVISIBLE = [0x061C, 0x200B, 0x200C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2060, 0x2065)]
_INVISIBLE += [*range(0x2066, 0x206A), 0xFEFF]
_TABLE: dict[int, str | None] = {
    **dict.fromkeys(_CONTROLS),
    **dict.fromkeys(_INVISIBLE),
    **dict.fromkeys(_SURROGATES, "\ufffd"),
}


def printable(text: str) -> str:
    """`text` without terminal control characters (C0 controls but newline and tab, DEL, C1 controls: ESC
        sequences, carriage returns, bells cannot rewrite or hide what a terminal shows), without the invisible
    characters that reorder or hide text (bidi overrides and isolates, zero-width spaces; the zero-width joiner of
    emoji stays), and with each lone surrogate
        replaced by U+FFFD (so the result always encodes as UTF-8). Never raises."""
    return text.translate(_TABLE)
