"""Training data for RE fine-tuning: leakage-checked chains, a held-out split by image, seeded batches."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np

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


def split_held_out(records: Sequence[Hierarchy], fraction: float, seed: int) -> tuple[list[Hierarchy], list[Hierarchy]]:
    """Hold out a fraction of images (all their rows), so validation never shares an image with training."""
    def group(r: Hierarchy) -> str:
        return r.image_file or r.id

    keys = sorted({group(r) for r in records})
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    held = set(ranked[:round(len(ranked) * fraction)])
    return [r for r in records if group(r) not in held], [r for r in records if group(r) in held]


def micro_batches(n_rows: int, batch_size: int, seed: int, start: int = 0) -> Iterator[np.ndarray]:
    """Row indices of micro-batch ``start``, ``start + 1``, ...: epoch e is a permutation seeded by (seed, e),
    so a resumed run continues with exactly the batches an uninterrupted run would have drawn."""
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise DataError(f"{n_rows} training rows are fewer than one batch of {batch_size}")
    index = start
    while True:
        epoch, position = divmod(index, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        yield order[position * batch_size:(position + 1) * batch_size]
        index += 1
