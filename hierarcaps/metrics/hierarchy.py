"""The HierarCaps hierarchy protocol ("hierarcaps-v1") as pure functions of arrays.

Definitions follow the reference implementation exactly (see ARCHITECTURE.md / the protocol notes):
radii from the root, 50 inclusive thresholds from min to max radius, one best-matching text per threshold
(first in row-major order on ties), consecutive duplicates collapsed by string, set precision and
per-tier recall against every reference chain of the query, Kendall's tau between radius and tier (a tie
counting half, never in tier order).
The per-threshold argmax is computed for all queries at once: thresholds are nested, so each text
enters at one threshold and a running best over those blocks equals the masked argmax.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from itertools import groupby, pairwise

import numpy as np

PROTOCOL = "hierarcaps-v1"
DEFAULT_STEPS = 50
DEFAULT_ROOT_TEXT = ""


def radii(text_emb: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Euclidean distance of every text embedding (..., d) to the root (d,), in float64."""
    return np.linalg.norm(text_emb.astype(np.float64) - root.astype(np.float64), axis=-1)


def kendall_tau_rows(row_values: np.ndarray) -> np.ndarray:
    """Per row: Kendall's tau between the values (radii) and the tier index, a tied pair counting 0.

    (concordant - discordant) / pairs. On a row without ties this is exactly the reference implementation's
    ``scipy.stats.kendalltau(argsort(r), [1..K])``, so every real model scores as upstream. A tie counts as
    half concordant, half discordant (the mean over every way of breaking it), never in tier order: the
    reference's stable argsort would count it as right, and a model whose tiers share one vector (or one
    radius) would score 1.0; here it scores 0.
    """
    k = row_values.shape[1]
    i, j = np.triu_indices(k, 1)
    return np.sign(row_values[:, j] - row_values[:, i]).sum(axis=1) / len(i)


def string_ids(texts: np.ndarray) -> np.ndarray:
    """Integer id per distinct string, same shape as ``texts``: predictions are compared by string."""
    _, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    return inverse.reshape(np.shape(texts))


def threshold_blocks(flat_radii: np.ndarray, steps: int) -> np.ndarray:
    """For each text, the first threshold j (of ``linspace(min, max, steps)``) whose mask includes it."""
    thresholds = np.linspace(flat_radii.min(), flat_radii.max(), steps)
    return np.searchsorted(thresholds, flat_radii, side="left")


def best_text_per_threshold(scores: np.ndarray, flat_radii: np.ndarray, steps: int) -> np.ndarray:
    """(queries, non-empty thresholds) flat index of the highest-scoring text inside each threshold's mask.

    Ties go to the lowest flat (row-major) index, as ``argmax`` over the masked array does. Thresholds
    that admit no new text cannot change the prediction and are omitted.
    """
    block = threshold_blocks(flat_radii, steps)
    order = np.argsort(block, kind="stable")           # by block, then by flat index
    bounds = np.flatnonzero(np.r_[True, np.diff(block[order]) != 0, True])
    sorted_scores = scores[:, order]
    rows = np.arange(scores.shape[0])
    best = np.empty((scores.shape[0], len(bounds) - 1), dtype=np.int64)
    best_val = np.full(scores.shape[0], -np.inf)
    best_idx = np.full(scores.shape[0], np.iinfo(np.int64).max)
    for b, (lo, hi) in enumerate(pairwise(bounds)):
        local = sorted_scores[:, lo:hi].argmax(axis=1)   # first maximum: lowest flat index in the block
        val, idx = sorted_scores[rows, lo + local], order[lo + local]
        better = (val > best_val) | ((val == best_val) & (idx < best_idx))
        best_val = np.where(better, val, best_val)
        best_idx = np.where(better, idx, best_idx)
        best[:, b] = best_idx
    return best


def collapse_repeats(sequence: Sequence[int]) -> list[int]:
    return [key for key, _ in groupby(sequence)]


def order_aware_recall(pred_ids: Sequence[int], chains: Sequence[Sequence[int]], n_tiers: int) -> float:
    """R_o: longest run of strictly increasing tier indices among the hits, in items, over ``n_tiers``."""
    found = {s for chain in chains for s in chain}

    def tier_of(s: int) -> int:
        return next(list(chain).index(s) for chain in chains if s in chain)

    indices = collapse_repeats([tier_of(p) for p in pred_ids if p in found])
    if not indices:
        return 0.0
    longest, run = 1, 1
    for previous, current in pairwise(indices):
        run = run + 1 if current > previous else 1
        longest = max(longest, run)
    return longest / n_tiers


@dataclasses.dataclass
class ChainScores:
    """Per-query hierarchy metrics (arrays of length Q) and the predicted chains."""

    precision: np.ndarray
    recall: np.ndarray
    recall_per_tier: np.ndarray    # (Q, K)
    order_aware_recall: np.ndarray
    f1: np.ndarray
    predictions: list[list[int]]   # flat text indices, consecutive string repeats collapsed


def score_chains(best: np.ndarray, sids: np.ndarray, query_rows: Sequence[Sequence[int]]) -> ChainScores:
    """Precision, recall, per-tier recall, R_o and F1 of each query's predicted chain."""
    n_tiers = sids.shape[1]
    flat_sids = sids.reshape(-1)
    q = len(query_rows)
    precision, recall, r_o, f1 = (np.zeros(q) for _ in range(4))
    per_tier = np.zeros((q, n_tiers))
    predictions = []
    for i, rows in enumerate(query_rows):
        preds = []
        for text in best[i]:
            if not preds or flat_sids[preds[-1]] != flat_sids[text]:
                preds.append(int(text))
        predictions.append(preds)
        pred_sids = [int(flat_sids[p]) for p in preds]
        chains = [[int(s) for s in sids[r]] for r in rows]
        predicted, truth = set(pred_sids), {s for chain in chains for s in chain}
        precision[i] = len(predicted & truth) / max(1, len(predicted))
        per_tier[i] = [any(chain[k] in predicted for chain in chains) for k in range(n_tiers)]
        recall[i] = per_tier[i].mean()
        r_o[i] = order_aware_recall(pred_sids, chains, n_tiers)
        total = precision[i] + recall[i]
        f1[i] = 2 * precision[i] * recall[i] / total if total else 0.0
    return ChainScores(precision, recall, per_tier, r_o, f1, predictions)


def dot_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) inner products in float64: cosine similarity of unit vectors, the default geometry."""
    return np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64).T


Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]


def similarity_to_texts(query_emb: np.ndarray, text_emb: np.ndarray, similarity: Similarity = dot_similarity
                        ) -> np.ndarray:
    """(Q, N * K) similarity of each query to every tier text, row-major over (N, K)."""
    return np.asarray(similarity(query_emb, text_emb.reshape(-1, text_emb.shape[-1])), dtype=np.float64)


def hierarchical_retrieval(scores: np.ndarray, row_radii: np.ndarray, texts: np.ndarray,
                           query_rows: Sequence[Sequence[int]], steps: int = DEFAULT_STEPS) -> ChainScores:
    """Score every query by hierarchical retrieval over the (N, K) tier texts.

    ``scores`` is (Q, N * K) from :func:`similarity_to_texts`, ``row_radii`` (N, K), ``texts`` (N, K)
    strings, ``query_rows[q]`` the rows whose chains are query q's references.
    """
    best = best_text_per_threshold(scores, row_radii.reshape(-1), steps)
    return score_chains(best, string_ids(texts), query_rows)
