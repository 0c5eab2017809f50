"""What a benchmark's metrics are computed from: radii, chain scores and retrieval hits, each computed once."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .hierarchy import DEFAULT_STEPS, ChainScores, hierarchical_retrieval, similarity_to_texts
from .retrieval import DEFAULT_KS, recall_at_k


class Units:
    """What a benchmark's metrics are computed from, each part computed once, when a metric first asks for it:
    the radii, the chain scores of image queries and of caption queries, and image <-> caption retrieval hits.
    ``bench`` is a ``scoring.EmbeddedBenchmark``."""

    def __init__(self, bench: Any, steps: int = DEFAULT_STEPS, ks: tuple[int, ...] = DEFAULT_KS) -> None:
        self.bench, self.steps, self.ks = bench, steps, ks

    @functools.cached_property
    def radii(self) -> np.ndarray:
        return self.bench.radii

    @functools.cached_property
    def image_scores(self) -> np.ndarray | None:
        bench = self.bench
        return None if bench.image_emb is None else similarity_to_texts(bench.image_emb, bench.text_emb,
                                                                        bench.similarity)

    @functools.cached_property
    def image_chains(self) -> ChainScores | None:
        if self.image_scores is None:
            return None
        return hierarchical_retrieval(self.image_scores, self.radii, self.bench.texts, self.bench.image_rows(),
                                      self.steps)

    @functools.cached_property
    def text_query_chains(self) -> ChainScores:
        queries, query_rows = self.bench.caption_queries()
        scores = similarity_to_texts(queries, self.bench.text_emb, self.bench.similarity)
        return hierarchical_retrieval(scores, self.radii, self.bench.texts, query_rows, self.steps)

    @functools.cached_property
    def retrieval(self) -> dict[str, dict[int, np.ndarray]] | None:
        """Image -> tier-4 caption and caption -> image hits at each k, or None for a text-only benchmark."""
        if self.image_scores is None:
            return None
        n, k = self.radii.shape
        similarity = self.image_scores.reshape(len(self.image_scores), n, k)[:, :, -1]
        positive = np.zeros(similarity.shape, dtype=bool)
        positive[self.bench.row_image, np.arange(n)] = True
        return {"i2t": recall_at_k(similarity, positive, self.ks),
                "t2i": recall_at_k(similarity.T, positive.T, self.ks)}


