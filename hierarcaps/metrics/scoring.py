"""Everything the benchmark reports, from embeddings and ids alone (the harness and leaderboard share it)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np

from ..errors import HierarcapsError
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, summarise_all
from .hierarchy import (
    DEFAULT_STEPS,
    ChainScores,
    Similarity,
    dot_similarity,
    hierarchical_retrieval,
    kendall_tau_rows,
    radii,
    similarity_to_texts,
)
from .retrieval import DEFAULT_KS, recall_at_k


@dataclasses.dataclass
class EmbeddedBenchmark:
    """A benchmark's texts and images as embeddings.

    ``texts`` (N, K) tier strings, ``text_emb`` (N, K, d) and ``root`` (d,) L2-normalised; ``image_emb``
    (M, d) and ``row_image`` (N,) image index per row, absent for text-only models. A model with its own
    geometry supplies ``text_radii`` (N, K) in place of ``||e - root||`` and ``similarity`` in place of the
    dot product (the Encoder's ``distance_to_root`` and ``similarity`` hooks).
    """

    texts: np.ndarray
    text_emb: np.ndarray
    root: np.ndarray
    image_emb: np.ndarray | None = None
    row_image: np.ndarray | None = None
    text_radii: np.ndarray | None = None
    similarity: Similarity = dot_similarity

    def __post_init__(self) -> None:
        arrays = {"text_emb": self.text_emb, "root": self.root, "image_emb": self.image_emb,
                  "text_radii": self.text_radii}
        for name, array in arrays.items():
            if array is not None and not np.all(np.isfinite(array)):
                raise HierarcapsError(f"{name} contains NaN or infinite values ({int((~np.isfinite(array)).sum())} "
                                      "entries): the model produced invalid embeddings")
        n, k = self.texts.shape
        if self.text_emb.shape[:2] != (n, k):
            raise HierarcapsError(f"text_emb has shape {self.text_emb.shape}, expected ({n}, {k}, d)")
        if (self.image_emb is None) != (self.row_image is None):
            raise HierarcapsError("image_emb and row_image go together")

    @property
    def radii(self) -> np.ndarray:
        return self.text_radii if self.text_radii is not None else radii(self.text_emb, self.root)

    def image_rows(self) -> list[list[int]]:
        """Rows whose chains are each image's references (several rows may share an image)."""
        rows: dict[int, list[int]] = defaultdict(list)
        for row, image in enumerate(self.row_image):  # type: ignore[arg-type]
            rows[int(image)].append(row)
        return [rows[i] for i in range(len(self.image_emb))]  # type: ignore[arg-type]

    def caption_queries(self) -> tuple[np.ndarray, list[list[int]]]:
        """Text-query variant: one query per distinct most-specific caption, referencing its rows."""
        rows: dict[str, list[int]] = defaultdict(list)
        for row, caption in enumerate(self.texts[:, -1]):
            rows[str(caption)].append(row)
        groups = list(rows.values())
        return self.text_emb[[g[0] for g in groups], -1], groups


def _chain_metrics(scores: ChainScores, prefix: str) -> dict[str, np.ndarray]:
    per_unit = {f"{prefix}precision": scores.precision, f"{prefix}recall": scores.recall,
                f"{prefix}order_aware_recall": scores.order_aware_recall, f"{prefix}f1": scores.f1}
    for k in range(scores.recall_per_tier.shape[1]):
        per_unit[f"{prefix}recall_tier{k + 1}"] = scores.recall_per_tier[:, k]
    return per_unit


def per_unit_metrics(bench: EmbeddedBenchmark, *, steps: int = DEFAULT_STEPS, ks: tuple[int, ...] = DEFAULT_KS
                     ) -> tuple[dict[str, np.ndarray], dict[str, ChainScores]]:
    """Every metric as per-unit values (per image, row or query), plus the chains behind them.

    Names: ``precision``, ``recall``, ``d_corr`` (the protocol's three); ``order_aware_recall``, ``f1``,
    ``recall_tier{k}``; the text-query variant ``text_query/...``; retrieval ``i2t_R@k``/``t2i_R@k``.
    """
    row_radii = bench.radii
    per_unit: dict[str, np.ndarray] = {"d_corr": kendall_tau_rows(row_radii)}
    chains: dict[str, ChainScores] = {}
    if bench.image_emb is not None:
        scores = similarity_to_texts(bench.image_emb, bench.text_emb, bench.similarity)
        chains["image"] = hierarchical_retrieval(scores, row_radii, bench.texts, bench.image_rows(), steps)
        per_unit.update(_chain_metrics(chains["image"], ""))
        n, k = row_radii.shape
        similarity = scores.reshape(len(scores), n, k)[:, :, -1]
        positive = np.zeros(similarity.shape, dtype=bool)
        positive[bench.row_image, np.arange(n)] = True
        for top, hits in recall_at_k(similarity, positive, ks).items():
            per_unit[f"i2t_R@{top}"] = hits
        for top, hits in recall_at_k(similarity.T, positive.T, ks).items():
            per_unit[f"t2i_R@{top}"] = hits
    queries, query_rows = bench.caption_queries()
    scores = similarity_to_texts(queries, bench.text_emb, bench.similarity)
    chains["text_query"] = hierarchical_retrieval(scores, row_radii, bench.texts, query_rows, steps)
    per_unit.update(_chain_metrics(chains["text_query"], "text_query/"))
    return per_unit, chains


def score(bench: EmbeddedBenchmark, *, steps: int = DEFAULT_STEPS, resamples: int = DEFAULT_RESAMPLES,
          seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Mean and seeded 95% bootstrap CI of every metric."""
    per_unit, _ = per_unit_metrics(bench, steps=steps)
    return summarise_all(per_unit, resamples=resamples, seed=seed)
