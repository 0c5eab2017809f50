"""What a submitted name, revision, link or number may be, and how text reaches the pages safely.

A name never becomes a path as given: the entry folder is a slug of it (letters, digits, ``.``, ``_``, ``-``;
never empty, ``.`` or ``..``; at most ``MAX_NAME_CHARS``), and the folder is checked to lie inside
``entries/`` at depth two. Links are ``http(s)://`` only. Every markdown cell is escaped.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import HierarcapsError

MAX_NAME_CHARS = 100
"""A model name or revision, and the folder made of it."""
MAX_TEXT_CHARS = 2000
"""Any other text field of submission.json (licence, link, training data)."""
MAX_PARAMETERS = 10**13
"""Parameter counts are 0 (unknown) up to this bound."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a model name or revision, or None."""
    if not value.strip():
        return "empty"
    if len(value) > MAX_NAME_CHARS:
        return f"{len(value)} characters, over the limit of {MAX_NAME_CHARS}"
    if _CONTROL.search(value):
        return "contains control characters (newlines, tabs)"
    if value.startswith(("/", "~", "\\", "./", "../")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return "looks like a file path; give the model's name (a folder path is never a name)"
    if not slug(value):
        return "has no letter or digit to name a folder with"
    return None


def slug(text: str) -> str:
    """The folder name for a name or revision: safe characters only, no leading or trailing dots; may be ''."""
    return _UNSAFE.sub("_", text).strip("._-")[:MAX_NAME_CHARS]


def entry_folder(board: Path, name: str, revision: str) -> Path:
    """``<board>/entries/<slug(name)>/<slug(revision)>``, refused if it would lie anywhere else."""
    parts = (slug(name), slug(revision))
    if not all(parts) or any(p in (".", "..") for p in parts):
        raise HierarcapsError(f"model name {name[:80]!r} / revision {revision[:80]!r} give no safe folder name")
    entries = (board / "entries").resolve()
    folder = (entries / parts[0] / parts[1]).resolve()
    if folder.parent.parent != entries:
        raise HierarcapsError(f"entry folder {folder} is not inside {entries}")
    return board / "entries" / parts[0] / parts[1]


def link_problem(value: str) -> str | None:
    """Links are empty or http(s) URLs with a host and no whitespace."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or re.search(r"[\s<>\"'`]", value) \
            or _CONTROL.search(value):
        return "must be an http:// or https:// URL (or empty)"
    return None


def markdown_cell(text: str) -> str:
    """Text that stays inside one markdown table cell and renders no HTML or link."""
    text = re.sub(r"[\r\n]+", " ", str(text))
    for char in "\\|<>[]`*_":
        text = text.replace(char, "\\" + char)
    return text
