"""Training data for RE fine-tuning: leakage-checked chains, and the group (image) each row is held out with."""

from __future__ import annotations

from ..data.csvio import read_hierarchies
from ..data.records import Hierarchy
from ..data.splits import offline_train_split, require_no_leakage
from ..errors import DataError

OFFLINE = "offline"


def training_records(source: str) -> list[Hierarchy]:
    """``offline`` (the expanded rows of non-test images) or a training file by path or URL, leakage-checked."""
    if source == OFFLINE:
        return offline_train_split()
    records = read_hierarchies(source, split="train")
    missing = [r.id for r in records if r.negative is None]
    if missing:
        raise DataError(f"{len(missing)} row(s) have no negative chain (e.g. id {missing[0]})", file=source,
                        field="negative")
    kept, _ = require_no_leakage(records, file=source)
    return kept


def group_of(record: Hierarchy) -> str:
    """What a held-out split keeps together: an image and all its rows (a text-only row is its own group)."""
    return record.image_file or record.id
