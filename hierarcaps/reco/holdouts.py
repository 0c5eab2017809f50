"""The rows a fusion trains on, and the rows that select and judge it.

A memory earns its keep on concepts the fusion never trained on, so by default (``holdout="concept"``) whole
concepts are held out: the pairs' class labels when they have them, otherwise clusters of the pairs' frozen text
embeddings (k-means, seeded), a group's rows (one image's captions) always in one concept. Held-out concepts are
drawn with probability proportional to their size, so their frequency profile is that of the data, which is
what will be scored, not mostly rare ones (as drawing concepts uniformly gives). They are split in two:

- ``select``: the early stopping and the kept step are chosen on it (a winner's curse lives here: the best of
  many noisy evaluations looks better than it is);
- ``decide``: untouched until the end, where the kept learned fusion is compared with the best training-free
  option (chosen on ``select``) by a paired bootstrap; ``auto`` keeps the learned fusion only if the whole
  interval lies above zero.

``in_distribution`` holds out whole groups of the training concepts, to record how the fusion does on the
concepts it trained on. ``holdout="group"`` holds out groups of the training concepts (no concept shift);
``"class"`` holds out whole labels drawn uniformly (concept shift weighted towards rare classes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from ..training import holdout


@dataclasses.dataclass(frozen=True)
class Splits:
    """Row indices of each part of the training pairs."""

    train: np.ndarray
    select: np.ndarray
    decide: np.ndarray
    in_distribution: np.ndarray
    concepts: int                      # how many concepts the pairs fell into


def concept_of_rows(text: np.ndarray, groups: Sequence[str], labels: Sequence[str] | None, count: int | None,
                    seed: int) -> list[str]:
    """Each row's concept: its label, or its cluster among ``count`` k-means clusters of the text embeddings
    (default about sqrt(n)); every row of a group takes the concept of the group's first row."""
    if labels is not None:
        raw = [str(label) for label in labels]
    else:
        raw = [str(c) for c in clusters(np.asarray(text, dtype=np.float32), count, seed)]
    first: dict[str, str] = {}
    for group, concept in zip(groups, raw):
        first.setdefault(group, concept)
    return [first[group] for group in groups]


def clusters(vectors: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """Seeded spherical k-means cluster of each row (faiss)."""
    import faiss

    count = count or max(2, min(1024, int(np.sqrt(len(vectors)))))
    count = min(count, len(vectors))
    units = np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)
    kmeans = faiss.Kmeans(units.shape[1], count, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.train(units)
    return kmeans.index.search(units, 1)[1][:, 0]


def weighted_concepts(concepts: Sequence[str], fraction: float, seed: int) -> list[str]:
    """Concepts drawn without replacement with probability proportional to their row counts (Efraimidis and
    Spirakis' keys), until they hold ``fraction`` of the rows."""
    names, sizes = np.unique(np.asarray(concepts, dtype=object).astype(str), return_counts=True)
    rng = np.random.default_rng([seed, 7])
    keys = rng.random(len(names)) ** (1.0 / sizes)
    chosen, held = [], 0
    for index in np.argsort(-keys, kind="stable"):
        if held >= fraction * len(concepts):
            break
        chosen.append(str(names[index]))
        held += int(sizes[index])
    return chosen


def concept_splits(text: np.ndarray, groups: Sequence[str], labels: Sequence[str] | None, fraction: float,
                   seed: int, count: int | None = None) -> Splits:
    """Whole concepts held out (``fraction`` of the rows, in two halves: select and decide), and whole groups of
    the remaining concepts held out for the in-distribution record."""
    concepts = concept_of_rows(text, groups, labels, count, seed)
    if fraction <= 0:
        everything = np.arange(len(concepts))
        return Splits(everything, everything[:0], everything[:0], everything[:0], len(set(concepts)))
    held = weighted_concepts(concepts, fraction, seed)
    select, decide = set(held[0::2]), set(held[1::2])
    rows = np.arange(len(concepts))
    in_select = np.array([c in select for c in concepts])
    in_decide = np.array([c in decide for c in concepts])
    rest = rows[~(in_select | in_decide)]
    if len(rest) == 0 or not in_select.any() or not in_decide.any():
        raise DataError(f"{len(set(concepts))} concept(s) cannot give a training part and two held-out parts; "
                        "lower --val-fraction or give more pairs (or more --concepts)", field="holdout")
    kept, recorded = holdout([groups[r] for r in rest], fraction / 2, seed)
    return Splits(rest[kept], rows[in_select], rows[in_decide], rest[recorded], len(set(concepts)))


def simple_splits(split_by: Sequence[str], fraction: float, seed: int) -> Splits:
    """Whole groups (or labels) held out, one half selecting and the other deciding; no concept shift."""
    train, held = holdout(split_by, fraction, seed)
    names = sorted({split_by[r] for r in held})
    select_names = set(names[0::2])
    in_select = np.array([split_by[r] in select_names for r in held], dtype=bool)
    return Splits(train, held[in_select], held[~in_select], held[:0], len(set(split_by)))
