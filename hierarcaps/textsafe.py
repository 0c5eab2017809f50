"""Text from outside the package (captions, names, ids, file names), made safe for each place it goes.

- Compared: :func:`comparison_key` (NFKC, case folded, zero-width and other format characters removed,
  whitespace collapsed), so a doubled space or an invisible character does not make a new string; names also
  by :func:`skeleton`, so a Cyrillic "а" does not make a new name.
- Shown in a terminal: :func:`escape_controls`, so an id cannot move the cursor, recolour the screen or
  reorder the line (bidi controls).
- Written to a spreadsheet: :func:`spreadsheet_cell`, so a cell cannot become a formula.
- Rendered as markdown: :func:`markdown_cell`, so a cell renders no HTML, link or table break.
"""

from __future__ import annotations

import re
import unicodedata

UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control, format (zero-width, bidi), surrogate, private-use and unassigned characters, line and paragraph
separators: nothing a reader can see or type."""


def unseen_characters(text: str) -> list[str]:
    """The characters of ``text`` a reader cannot see (see ``UNSEEN_CATEGORIES``), in order."""
    return [c for c in text if unicodedata.category(c) in UNSEEN_CATEGORIES]


def escape_controls(text: str) -> str:
    """``text`` with every unseen character written as an escape (``\\x1b``, ``\\u202e``): inert in a terminal."""
    return "".join(_escaped(c) if unicodedata.category(c) in UNSEEN_CATEGORIES else c for c in str(text))


def _escaped(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def comparison_key(text: str) -> str:
    """The form two captions are compared in: NFKC (no-break and full-width spaces become spaces), format
    characters (zero-width spaces and joiners, soft hyphens, bidi marks) removed, case folded, whitespace
    runs collapsed to one space and trimmed."""
    text = unicodedata.normalize("NFKC", str(text))
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(text.casefold().split())


# letters of other scripts drawn like Latin ones (from Unicode's confusables list, the common ones), and the
# digits and letters that registries treat as one (l / i / 1, o / 0)
_LOOKALIKES = str.maketrans({
    **dict.fromkeys("аɑα", "a"), **dict.fromkeys("вβʙ", "b"), **dict.fromkeys("сϲⅽ", "c"), "ԁ": "d", "ⅾ": "d",
    **dict.fromkeys("еєɛε", "e"), "ɡ": "g", **dict.fromkeys("һн", "h"),
    **dict.fromkeys("іıιїɩ", "1"), **dict.fromkeys("ӏⅼ|", "1"), "ј": "j", **dict.fromkeys("кκ", "k"),
    **dict.fromkeys("мϻ", "m"), **dict.fromkeys("пηп", "n"), **dict.fromkeys("оοσօ", "0"),
    **dict.fromkeys("рρ", "p"), "ԛ": "q", **dict.fromkeys("ѕ", "s"), **dict.fromkeys("тτ", "t"),
    **dict.fromkeys("υս", "u"), **dict.fromkeys("νѵ", "v"), **dict.fromkeys("ԝѡω", "w"),
    **dict.fromkeys("хχ", "x"), **dict.fromkeys("уγү", "y"), "ᴢ": "z",
    "l": "1", "i": "1", "o": "0",
})


def skeleton(name: str) -> str:
    """What a name looks like: NFKC, case folded, accents dropped, look-alike letters of other scripts mapped to
    Latin, l / i / 1 and o / 0 merged, separators (space . _ -) removed. Two names with one skeleton are
    one name to a reader, whatever their code points."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", str(name)).casefold())
    text = "".join(c for c in text if not unicodedata.combining(c) and unicodedata.category(c) not in
                   UNSEEN_CATEGORIES)
    return re.sub(r"[\s._\-]+", "", text.translate(_LOOKALIKES))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string starting like a formula (``= + - @``, tab, CR) gets a
    leading apostrophe, as OWASP recommends; numbers are left as numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def markdown_cell(text: object) -> str:
    """Text that stays inside one markdown table cell and renders no HTML, link or emphasis."""
    text = re.sub(r"[\r\n]+", " ", escape_controls(str(text)))
    for char in "\\|<>[]`*_":
        text = text.replace(char, "\\" + char)
    return text
