"""JSON held to one standard wherever the package reads or writes a document that others hand over or keep.

Read: a regular file (never a pipe, a device or a link to one), its size bounded before a byte is read, UTF-8
without a byte-order mark, strict JSON under RFC 8259 (no ``NaN`` or ``Infinity``, no key twice in one object, no
lone surrogate escapes, nesting bounded). Written: the same, so that what one command writes every other reads.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._io import read_bounded
from .errors import DataError

MAX_DEPTH = 64
"""Nesting of objects and arrays (Python's own parser would recurse a thousand levels, then crash)."""
BOM = b"\xef\xbb\xbf"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        document[key] = value
    return document


def _depth_and_text_problem(value: Any, depth: int = 0) -> str | None:
    """Why a parsed value is not a strict document: too deep, or a string holding a lone surrogate."""
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds a lone surrogate escape (\\ud800-\\udfff), which is no character"
        return None
    children = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) \
        else ()
    return next((p for child in children if (p := _depth_and_text_problem(child, depth + 1)) is not None), None)


def parse(data: bytes, *, file: str) -> Any:
    """A strict JSON document from bytes; one DataError naming ``file`` and the reason otherwise."""
    if data.startswith(BOM):
        raise DataError("starts with a UTF-8 byte-order mark; save it as UTF-8 without one", file=file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})", file=file) from None
    try:
        document = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise DataError(f"not valid JSON (nested more than {MAX_DEPTH} levels)", file=file) from None
    except ValueError as exc:        # syntax, NaN, a repeated key, an integer too long to convert
        raise DataError(f"not valid JSON ({' '.join(str(exc).split())[:160]})", file=file) from None
    if (problem := _depth_and_text_problem(document)) is not None:
        raise DataError(f"not valid JSON ({problem})", file=file)
    return document


def read(path: str | os.PathLike[str], *, limit: int, what: str) -> Any:
    """A strict JSON document from a regular file of at most ``limit`` bytes (checked before reading)."""
    return parse(read_bounded(path, limit, what=what), file=str(path))


def read_object(path: str | os.PathLike[str], *, limit: int, what: str) -> dict[str, Any]:
    """:func:`read`, refusing anything but a JSON object at the top."""
    document = read(path, limit=limit, what=what)
    if not isinstance(document, dict):
        raise DataError(f"not a valid {what} (the top level must be a JSON object)", file=str(path))
    return document


def dumps(document: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """The text of a document as every reader here accepts it (a NaN or infinity is refused, not written)."""
    try:
        return json.dumps(document, indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError as exc:
        raise DataError(f"cannot write a non-finite number as JSON ({exc})") from None
