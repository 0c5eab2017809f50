"""Text from outside the package (captions, names, ids, file names), made safe for each place it goes.

- Compared: :func:`comparison_key` (NFKC, case folded, zero-width and other format characters removed,
  whitespace collapsed), so a doubled space or an invisible character does not make a new string; names also
  by :func:`skeletons` (Unicode's confusables, UTS #39, through ICU), so a Cyrillic "а" does not make a new name.
- Shown in a terminal: :func:`escape_controls`, so an id cannot move the cursor, recolour the screen or
  reorder the line (bidi controls).
- Written to a spreadsheet: :func:`spreadsheet_cell`, so a cell cannot become a formula.
- Rendered as markdown: :func:`markdown_cell`, so a cell renders no HTML, link or table break.
- Made a file or folder name: :func:`slug`, so a name cannot climb out of its folder or hide a character.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control, format (zero-width, bidi), surrogate, private-use and unassigned characters, line and paragraph
separators: nothing a reader can see or type."""


def unseen_characters(text: str) -> list[str]:
    """The characters of ``text`` a reader cannot see (see ``UNSEEN_CATEGORIES``), in order."""
    return [c for c in text if unicodedata.category(c) in UNSEEN_CATEGORIES]


_UNSAFE_IN_FILE_NAMES = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str, limit: int = 100) -> str:
    """A file or folder name made of ``text``: NFKC, each run of characters other than letters, digits, ``.``,
    ``_`` and ``-`` as one ``_``, no leading or trailing ``.``, ``_`` or ``-``, at most ``limit`` characters; may
    be '' (the caller names a fallback or refuses)."""
    return _UNSAFE_IN_FILE_NAMES.sub("_", unicodedata.normalize("NFKC", text)).strip("._-")[:limit]


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


SEPARATOR_CATEGORIES = frozenset({"Pd", "Pc", "Zs"})
"""Every Unicode dash (Pd), connector (Pc: the underscore and its kin) and space (Zs): all one separator to a
reader, as the full stop is."""


def caption_key(text: str) -> str:
    """The form a caption is compared in for leakage: :func:`comparison_key`, punctuation and symbols at either
    end dropped ("a goat." is "a goat"), then Unicode's confusable skeleton (a Cyrillic "о" is an "o")."""
    key = comparison_key(text)
    start, end = 0, len(key)
    while start < end and unicodedata.category(key[start])[0] in "PSZ":
        start += 1
    while end > start and unicodedata.category(key[end - 1])[0] in "PSZ":
        end -= 1
    return " ".join(confusable_skeleton(key[start:end]).casefold().split())


@functools.lru_cache(maxsize=1)
def _spoof_checker():
    import icu

    return icu.SpoofChecker()


def confusable_skeleton(text: str) -> str:
    """Unicode's confusable skeleton of ``text`` (UTS #39, from Unicode's published confusables data as ICU
    implements it): two strings with one skeleton are drawn alike (Greek capital Mu and M, Cherokee letters and
    Latin ones, rn and m, l and 1)."""
    return _spoof_checker().getSkeleton(0, text)


@functools.lru_cache(maxsize=1)
def _separator_shapes() -> frozenset[str]:
    """The full stop, every dash, connector and space, and every single character Unicode's confusables map one
    of them to (an em dash is drawn as the katakana prolonged sound mark)."""
    separators = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in SEPARATOR_CATEGORIES}
    separators.add(".")
    return frozenset(separators | {shape for c in separators if len(shape := confusable_skeleton(c)) == 1})


def _without_separators(text: str) -> str:
    return "".join(c for c in text if c not in _separator_shapes() and unicodedata.category(c) not in
                   UNSEEN_CATEGORIES)


def _shape(text: str) -> str:
    """Accents dropped and separators removed from a skeleton (some confusables map to a dash-like mark)."""
    return _without_separators("".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)))


def skeletons(name: str) -> frozenset[str]:
    """What a name looks like, case aside: with every dash, connector, space and full stop removed, Unicode's
    confusable skeleton (UTS #39) of its case folding, and of the case folding of its skeleton (so a Greek
    capital Mu, drawn as M, folds with m), accents dropped. Names that share a skeleton are one name to a
    reader (:func:`look_alike`), whatever their code points; case twins always share the first."""
    text = _without_separators(unicodedata.normalize("NFKC", str(name)))
    return frozenset({_shape(confusable_skeleton(text.casefold())),
                      _shape(confusable_skeleton(confusable_skeleton(text).casefold()))})


def look_alike(a: str, b: str) -> bool:
    """Whether two names read as one (see :func:`skeletons`)."""
    return bool(skeletons(a) & skeletons(b))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string starting like a formula (``= + - @``, tab, CR) gets a
    leading apostrophe, as OWASP recommends; numbers are left as numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


SCRIPT_SCHEMES = re.compile(r"(?i)\b(javascript|vbscript|data|file)(\s*):")


def markdown_cell(text: object) -> str:
    """Text that stays inside one markdown table cell and renders no HTML, link or emphasis in any renderer:
    ``& < >`` as HTML entities (every markdown renderer shows them as the characters), table and emphasis marks
    and brackets backslash-escaped, and the colon of a script scheme (``javascript:``) as an entity, so no
    renderer that autolinks can make it a link."""
    text = re.sub(r"[\r\n]+", " ", escape_controls(str(text)))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for char in "\\|[]`*_":
        text = text.replace(char, "\\" + char)
    return SCRIPT_SCHEMES.sub(lambda m: f"{m.group(1)}{m.group(2)}&#58;", text)
