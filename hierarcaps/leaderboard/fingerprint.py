"""Recognising a copy of an entry by what its embeddings are, not by their bytes.

A copy of an entry's embeddings scores what the entry scores whatever container holds it, however its rows and
ids are shuffled together, scaled, rotated by any orthogonal matrix or blurred by noise far below what moves a
score. Two signatures see through all of that:

- **Representation** (:class:`Signature`): the cosine similarities among a fixed probe set of the test set's
  texts, images and the root (a Gram matrix: unchanged by rotation, scale and row order once rows are aligned by
  their ids), and the probe texts' distances to the root as the metrics read them (declared radii or
  ``||e - r||``), scaled to mean 1. :func:`distance` is the larger RMS difference of the two, over the probes
  both entries have (text-only entries share no image probes).
- **Behaviour**: every per-unit value every metric averages (per image, row and query); :func:`agreement` is the
  share of them two entries have equal.

:func:`copy_reason` calls a submission a copy of an entry when its representation lies within
``COPY_DISTANCE`` of the entry's, or within ``NEAR_DISTANCE`` while it agrees on at least ``COPY_AGREEMENT`` of
the per-unit values. A model fine-tuned for a few steps moves the representation by more than that and changes
many per-unit values (the figures are beside the constants). A copy blurred until it scores measurably
differently from its source cannot be told from a genuinely different model by content alone.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .validate import Submission

PROBE_TEXTS = 512
PROBE_IMAGES = 128
PROBE_SEED = 20261207
COPY_DISTANCE = 1e-3
"""Representations closer than this are one model. Measured on the board's MiniLM entry: Gaussian noise of
1e-6 per coordinate moves it 1.4e-6, 1e-4 moves it 1.4e-4, a rotation 3e-8; one fine-tuning step at lr 1e-5
moves it 3.6e-3, three steps 9.5e-3."""
NEAR_DISTANCE = 2e-2
COPY_AGREEMENT = 0.9
"""Within ``NEAR_DISTANCE``, a submission agreeing on this share of per-unit values is a copy. Measured: noise of
1e-3 per coordinate (distance 1.4e-3) agrees on 92.6%; one fine-tuning step at lr 1e-5 on 84.4%, three on
77.4%."""


@dataclasses.dataclass(frozen=True)
class Signature:
    """What an entry's embeddings are, up to rotation, scale and row order (see the module docstring)."""

    texts: np.ndarray            # (PROBE_TEXTS + 1, d) unit rows: the root, then the probe texts
    images: np.ndarray | None    # (PROBE_IMAGES, d) unit rows, or None for a text-only entry
    radii: np.ndarray            # (PROBE_TEXTS,) distance to the root, scaled to mean 1

    def gram(self, with_images: bool) -> np.ndarray:
        rows = np.concatenate([self.texts, self.images]) if with_images and self.images is not None else self.texts
        rows = rows.astype(np.float64)
        return rows @ rows.T


def probes(count: int, available: int) -> np.ndarray:
    """The probe rows: a fixed seeded choice (the same for every entry, so their Gram matrices compare)."""
    rng = np.random.default_rng(PROBE_SEED + available)
    return np.sort(rng.choice(available, size=min(count, available), replace=False))


def signature(sub: Submission) -> Signature:
    """The representation signature of a validated submission (rows already in the official id order)."""
    text_rows = probes(PROBE_TEXTS, len(sub.text))
    texts = np.concatenate([sub.root[None], sub.text[text_rows]])
    if sub.text_radii is not None:
        radii = np.asarray(sub.text_radii, dtype=np.float64)[text_rows]
    else:
        radii = np.linalg.norm(sub.text[text_rows].astype(np.float64) - sub.root.astype(np.float64), axis=1)
    radii = radii / max(float(radii.mean()), 1e-12)
    images = sub.image[probes(PROBE_IMAGES, len(sub.image))] if sub.image is not None else None
    return Signature(texts, images, radii)


def distance(a: Signature, b: Signature) -> float:
    """How far apart two representations are: the larger RMS difference of their probe Gram matrices (over the
    probes both have) and of their scaled radii."""
    both_images = a.images is not None and b.images is not None
    gram = float(np.sqrt(np.mean((a.gram(both_images) - b.gram(both_images)) ** 2)))
    radii = float(np.sqrt(np.mean((a.radii - b.radii) ** 2)))
    return max(gram, radii)


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The share of per-unit metric values (over the metrics both have) that two entries have equal."""
    shared = [name for name in a if name in b and len(a[name]) == len(b[name])]
    if not shared:
        return 0.0
    same = sum(int(np.sum(np.isclose(a[n], b[n], rtol=0, atol=1e-9))) for n in shared)
    return same / sum(len(a[n]) for n in shared)


def copy_reason(new: Signature, old: Signature, new_units: dict[str, np.ndarray] | None,
                old_units: dict[str, np.ndarray] | None) -> str | None:
    """Why a submission with ``new`` is a copy of an entry with ``old``, or None. ``*_units`` are the per-unit
    metric values, needed only when the representations are near (pass None to skip that test)."""
    gap = distance(new, old)
    if gap <= COPY_DISTANCE:
        return f"the same embeddings up to rotation, scale, row order and noise (distance {gap:.1e})"
    if gap <= NEAR_DISTANCE and new_units is not None and old_units is not None:
        shared = agreement(new_units, old_units)
        if shared >= COPY_AGREEMENT:
            return (f"near-identical embeddings (distance {gap:.1e}) that score the same on {shared:.1%} of every "
                    "metric's units")
    return None
