"""The Hierarchy record: one image and its chain of captions, generic -> specific."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import unicodedata
from collections.abc import Iterable, Sequence
from urllib.parse import urlparse

from ..errors import DataError
from ..textsafe import comparison_key, escape_controls

TIERS = 4
"""The protocol's chain length, generic to specific (a record may declare another with ``n_tiers``)."""
TIER_SEPARATOR = " => "


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def control_characters(text: str) -> str:
    """The control characters (C0 but whitespace, C1, DEL) and bidi controls in a caption: no caption needs
    them, and they hide or reorder text wherever the caption is shown. (Line breaks and tabs occur in the
    official files and are whitespace.)"""
    return "".join(dict.fromkeys(c for c in text if (unicodedata.category(c) == "Cc" and c not in "\t\n\r")
                                 or c in BIDI_CONTROLS))


def split_tiers(cell: str) -> tuple[str, ...]:
    """Split an official ``a => b => c => d`` cell into tiers stripped of surrounding whitespace."""
    return tuple(part.strip() for part in cell.split("=>"))


def join_tiers(tiers: Sequence[str]) -> str:
    return TIER_SEPARATOR.join(tiers)


def image_file_from_url(url: str) -> str:
    """File name an image is stored under: the basename of its URL (COCO names are unique)."""
    return posixpath.basename(urlparse(url).path)


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """A caption chain for one image.

    ``positive`` runs generic -> specific and each tier is entailed by the next. ``negative`` (optional)
    is a chain whose tier k+1 fits under positive tier k but contradicts positive tier k+1.
    ``positive_cell``/``negative_cell`` keep a row's cell text exactly as read so that an unchanged
    record is written back byte for byte (the official files carry stray whitespace).
    """

    id: str
    positive: tuple[str, ...]
    negative: tuple[str, ...] | None = None
    image_url: str | None = None
    image_file: str | None = None
    source: str = ""
    split: str = ""
    positive_cell: str | None = dataclasses.field(default=None, compare=False, repr=False)
    negative_cell: str | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def n_tiers(self) -> int:
        return len(self.positive)

    def problems(self, n_tiers: int | None = TIERS) -> list[tuple[str, str]]:
        """Every (field, message) wrong with this record; empty when it is valid."""
        found: list[tuple[str, str]] = []
        if not str(self.id).strip():
            found.append(("id", "empty id"))
        if self.image_file is not None and (self.image_file in ("", ".", "..") or "/" in self.image_file
                                            or "\\" in self.image_file or "\0" in self.image_file):
            found.append(("image_url", f"gives no plain image file name ({self.image_file[:80]!r})"))
        chains = [("positive", self.positive)]
        if self.negative is not None:
            chains.append(("negative", self.negative))
        for name, tiers in chains:
            if n_tiers is not None and len(tiers) != n_tiers:
                found.append((name, f"has {len(tiers)} tiers, expected {n_tiers}"))
            seen: dict[str, int] = {}
            for k, tier in enumerate(tiers, start=1):
                if not tier.strip():
                    found.append((name, f"tier {k} is empty"))
                elif "=>" in tier:
                    found.append((name, f"tier {k} contains the tier separator '=>'"))
                elif hidden := control_characters(tier):
                    found.append((name, f"tier {k} contains control characters ({escape_controls(hidden)})"))
                elif comparison_key(tier) in seen:
                    found.append((name, f"tier {k} repeats tier {seen[comparison_key(tier)]}"))
                else:
                    seen[comparison_key(tier)] = k
        if self.negative is not None and len(self.negative) != len(self.positive):
            found.append(("negative", f"has {len(self.negative)} tiers but positive has {len(self.positive)}"))
        return found

    def cell(self, which: str) -> str:
        """The official CSV cell for ``positive`` or ``negative``: verbatim if unchanged since reading."""
        tiers = getattr(self, which)
        verbatim = getattr(self, f"{which}_cell")
        if verbatim is not None and split_tiers(verbatim) == tuple(tiers):
            return verbatim
        return join_tiers(tiers)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "positive": list(self.positive),
            "negative": list(self.negative) if self.negative is not None else None,
            "image_url": self.image_url,
            "image_file": self.image_file,
            "source": self.source,
            "split": self.split,
        }


def validate_records(records: Iterable[Hierarchy], *, file: str | None = None,
                     n_tiers: int | None = TIERS, first_row: int = 1) -> list[DataError]:
    """All problems in a sequence of records (bad tiers, duplicated ids), each located by row and field."""
    errors: list[DataError] = []
    seen: dict[str, int] = {}
    for row, record in enumerate(records, start=first_row):
        errors.extend(DataError(msg, file=file, row=row, field=fld) for fld, msg in record.problems(n_tiers))
        if record.id in seen:
            errors.append(DataError(f"duplicated id {record.id!r} (first seen in row {seen[record.id]})",
                                    file=file, row=row, field="id"))
        else:
            seen[record.id] = row
    return errors


def content_checksum(records: Iterable[Hierarchy]) -> str:
    """SHA-256 over the records' content (ids, tiers, images), independent of file format and order of keys."""
    digest = hashlib.sha256()
    for record in records:
        payload = record.to_dict()
        payload.pop("split")
        payload.pop("source")
        digest.update(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()
