"""Standard cross-modal retrieval: Recall@K from a similarity matrix and a positive mask."""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)


def best_positive_rank(similarity: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """0-based rank of each query's best positive: how many negatives score strictly higher."""
    sims = similarity.astype(np.float64)
    best_pos = np.where(positive, sims, -np.inf).max(axis=1)
    return (np.where(positive, -np.inf, sims) > best_pos[:, None]).sum(axis=1)


def recall_at_k(similarity: np.ndarray, positive: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS
                ) -> dict[int, np.ndarray]:
    """Per-query hit (0/1) at each K."""
    rank = best_positive_rank(similarity, positive)
    return {k: (rank < k).astype(np.float64) for k in ks}
