"""Seeded percentile bootstrap over the units a metric averages (images, rows, queries).

Resamples are drawn once per (unit count, seed) as count matrices, so every metric over the same units uses
the same resamples and their means come from matrix products. The counts are drawn a chunk of rows at a time
(at most ``CHUNK_CELLS`` cells), so memory stays bounded whatever the number of resamples; drawing in chunks
gives the same resamples as drawing at once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95


CHUNK_CELLS = 2**23
"""Cells of one chunk of the count matrix (64 MiB as float64): the bootstrap's memory, whatever --resamples."""


def resample_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """(rows, n) chunks of how often each unit is drawn in each bootstrap resample, in resample order."""
    if resamples * n <= CHUNK_CELLS:
        yield _counts_at_once(n, resamples, seed)
        return
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_CELLS // n)
    for start in range(0, resamples, rows):
        yield _counts(rng.integers(0, n, size=(min(rows, resamples - start), n)), n)


@functools.lru_cache(maxsize=8)
def _counts_at_once(n: int, resamples: int, seed: int) -> np.ndarray:
    """The whole count matrix of a small bootstrap, kept for the next metric over the same units."""
    return _counts(np.random.default_rng(seed).integers(0, n, size=(resamples, n)), n)


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    offsets = (np.arange(len(draws))[:, None] * n + draws).reshape(-1)
    return np.bincount(offsets, minlength=len(draws) * n).reshape(len(draws), n).astype(np.float64)


def bootstrap_cis(values: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  level: float = LEVEL) -> np.ndarray:
    """Percentile CI of the mean of each column of ``values`` (n_units, n_metrics) -> (n_metrics, 2)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    means = np.concatenate([counts @ values for counts in resample_counts(len(values), resamples, seed)]) \
        / len(values)
    tail = (1 - level) / 2 * 100
    return np.percentile(means, [tail, 100 - tail], axis=0).T


def summarise_all(per_unit: dict[str, np.ndarray], *, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Mean, 95% CI and unit count of each metric, as stored in result files."""
    out: dict[str, dict[str, Any]] = {}
    by_size: dict[int, list[str]] = {}
    for name, values in per_unit.items():
        by_size.setdefault(len(values), []).append(name)
    for n, names in by_size.items():
        matrix = np.stack([np.asarray(per_unit[name], dtype=np.float64) for name in names], axis=1)
        cis = bootstrap_cis(matrix, resamples=resamples, seed=seed)
        for name, column, (low, high) in zip(names, matrix.T, cis):
            out[name] = {"value": float(column.mean()), "ci95": [float(low), float(high)], "n": n}
    return {name: out[name] for name in per_unit}
