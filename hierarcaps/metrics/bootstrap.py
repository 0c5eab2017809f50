"""Seeded percentile bootstrap over the units a metric averages (images, rows, queries).

Resamples are drawn once per (unit count, seed) as a count matrix, so every metric over the same units
uses the same resamples and all their means come from one matrix product.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95


@functools.lru_cache(maxsize=8)
def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) how often each unit is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.repeat(np.arange(resamples), n), draws.reshape(-1)), 1)
    return counts


def bootstrap_cis(values: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  level: float = LEVEL) -> np.ndarray:
    """Percentile CI of the mean of each column of ``values`` (n_units, n_metrics) -> (n_metrics, 2)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    means = resample_counts(len(values), resamples, seed) @ values / len(values)
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
