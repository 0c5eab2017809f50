"""Standard cross-modal retrieval: Recall@K from a similarity matrix and a positive mask.

Ties are never broken in the query's favour: a positive that ties with negatives scores the expected hit
rate of a random order among the tied items. A collapsed model (every similarity equal) then scores what
chance gives, not a perfect recall; a model without ties scores exactly as usual.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)


def tie_groups(similarity: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: negatives strictly above its best positive, negatives tied with it, positives tied with it."""
    sims = similarity.astype(np.float64)
    best = np.where(positive, sims, -np.inf).max(axis=1, keepdims=True)
    above = (~positive & (sims > best)).sum(axis=1)
    tied_negatives = (~positive & (sims == best)).sum(axis=1)
    tied_positives = (positive & (sims == best)).sum(axis=1)
    return above, tied_negatives, tied_positives


def hit_probability(above: np.ndarray, tied_negatives: np.ndarray, tied_positives: np.ndarray, k: int
                    ) -> np.ndarray:
    """P(a positive is among the top ``k``) when the tied items come in a random order.

    ``k - above`` slots are left for the tied group; all of them go to tied negatives with probability
    C(t, m) / C(t + p, m) (hypergeometric), so the hit rate is one minus that.
    """
    from scipy.special import gammaln

    slots = k - above
    t, p = tied_negatives.astype(np.float64), tied_positives.astype(np.float64)
    m = np.clip(slots, 0, None).astype(np.float64)
    fits = (slots > 0) & (m <= t)
    log_all_negative = np.where(fits, gammaln(t + 1) - gammaln(np.where(fits, t - m, 0) + 1)
                                - gammaln(t + p + 1) + gammaln(np.where(fits, t + p - m, 0) + 1), 0.0)
    return np.where(slots <= 0, 0.0, np.where(m > t, 1.0, 1.0 - np.exp(log_all_negative)))


def recall_at_k(similarity: np.ndarray, positive: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS
                ) -> dict[int, np.ndarray]:
    """Per-query hit at each K: 0 or 1, or the expected hit under a random order of tied items."""
    groups = tie_groups(similarity, positive)
    return {k: hit_probability(*groups, k) for k in ks}
