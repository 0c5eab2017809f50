"""What a submitted name, revision, link or number may be, and how names become folders.

Names are NFKC-normalised (so NFC and NFD spellings are one name) and may hold no character a reader cannot
see (controls, bidi and other format characters). A name never becomes a path as given: the entry folder is a
slug of it (letters, digits, ``.``, ``_``, ``-``; never empty, ``.``, ``..`` or a name Windows reserves; at
most ``MAX_NAME_CHARS``), checked to lie inside ``entries/`` at depth two. Two entries whose names look alike
(a shared confusable skeleton from Unicode's own data, UTS #39 through ICU: case, accents, look-alike letters
of every script, l/I/1, O/0, every dash, connector and space) are refused, as package registries refuse
look-alike project names: on a page, and in a checkout on a case-insensitive disk, they would be one entry.
Links are ``http(s)://`` only.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import textsafe
from ..errors import HierarcapsError
from ..textsafe import escape_controls, look_alike, unseen_characters

MAX_NAME_CHARS = 100
"""A model name or revision, and the folder made of it."""
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)),
                              *(f"LPT{i}" for i in range(10))})


def normalised(value: str) -> str:
    """The form a name is stored and compared in (NFKC)."""
    return unicodedata.normalize("NFKC", value)


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a model name or revision, or None."""
    if not value.strip():
        return "empty"
    if len(value) > MAX_NAME_CHARS:
        return f"{len(value)} characters, over the limit of {MAX_NAME_CHARS}"
    if hidden := unseen_characters(value):
        return ("contains control characters or others a reader cannot see (newlines, tabs, bidi or zero-width "
                f"marks: {escape_controls(''.join(dict.fromkeys(hidden)))[:60]})")
    value = normalised(value)
    if value.startswith(("/", "~", "\\", "./", "../")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return "looks like a file path; give the model's name (a folder path is never a name)"
    if not slug(value):
        return "has no letter or digit to name a folder with"
    if slug(value).split(".")[0].upper() in WINDOWS_RESERVED:
        return f"makes the folder {slug(value)!r}, a name Windows reserves for devices"
    return None


def slug(text: str) -> str:
    """The folder name for a name or revision (``textsafe.slug`` at the name's length bound); may be ''."""
    return textsafe.slug(text, MAX_NAME_CHARS)


def lookalike(model: dict[str, Any], other: Any) -> str | None:
    """Why an entry of ``model`` (name, revision) cannot sit beside ``other``'s entry, or None: another model
    whose name looks the same, or a revision of the same model that looks like one already there."""
    if not isinstance(other, dict) or not all(isinstance(other.get(k), str) for k in ("name", "revision")):
        return None
    name, other_name = normalised(model["name"]), normalised(other["name"])
    if name != other_name:
        if look_alike(name, other_name):
            return f"the model {escape_controls(other_name)!r}, a name that looks the same as {escape_controls(name)!r}"
        return None
    revision, other_revision = normalised(model["revision"]), normalised(other["revision"])
    if revision != other_revision and look_alike(revision, other_revision):
        return (f"revision {escape_controls(other_revision)!r} of this model, which looks the same as "
                f"{escape_controls(revision)!r}")
    return None


def entry_folder(board: Path, name: str, revision: str) -> Path:
    """``<board>/entries/<slug(name)>/<slug(revision)>``, refused if it would lie anywhere else."""
    parts = (slug(name), slug(revision))
    if not all(parts) or any(p in (".", "..") for p in parts):
        raise HierarcapsError(f"model name {escape_controls(name[:80])!r} / revision "
                              f"{escape_controls(revision[:80])!r} give no safe folder name")
    entries = (board / "entries").resolve()
    folder = (entries / parts[0] / parts[1]).resolve()
    if folder.parent.parent != entries:
        raise HierarcapsError(f"entry folder {folder} is not inside {entries}")
    return board / "entries" / parts[0] / parts[1]


def link_problem(value: str) -> str | None:
    """Links are empty or http(s) URLs with a host and no whitespace or invisible characters."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or re.search(r"[\s<>\"'`]", value) \
            or unseen_characters(value):
        return "must be an http:// or https:// URL (or empty)"
    return None
