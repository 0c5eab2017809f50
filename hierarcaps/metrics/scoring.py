"""Everything the benchmark reports, from embeddings and ids alone (the harness and leaderboard share it)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np

from ..errors import HierarcapsError
from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, summarise_all
from .catalogue import METRICS
from .hierarchy import (
    DEFAULT_STEPS,
    ChainScores,
    Similarity,
    dot_similarity,
    radii,
)
from .retrieval import DEFAULT_KS
from .units import Units


@dataclasses.dataclass
class EmbeddedBenchmark:
    """A benchmark's texts and images as embeddings.

    ``texts`` (N, K) tier strings, ``text_emb`` (N, K, d) and ``root`` (d,) L2-normalised; ``image_emb``
    (M, d) and ``row_image`` (N,) image index per row, absent for text-only models. A model with its own
    geometry supplies ``text_radii`` (N, K) in place of ``||e - root||`` and ``similarity`` in place of the
    dot product (the fields of the model's ``Geometry``, from ``Encoder.geometry()``).
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


def per_unit_metrics(bench: EmbeddedBenchmark, *, steps: int = DEFAULT_STEPS, ks: tuple[int, ...] = DEFAULT_KS
                     ) -> tuple[dict[str, np.ndarray], dict[str, ChainScores]]:
    """Every metric the catalogue declares (``catalogue.METRICS``, in its order) as per-unit values (per image,
    row or query), plus the chains behind them (``image``, ``text_query``); a metric that does not apply (image
    metrics of a text-only benchmark) is left out."""
    units = Units(bench, steps, ks)
    per_unit = {name: values for name, info in METRICS.items() if (values := info.compute(units)) is not None}
    chains = {"text_query": units.text_query_chains}
    if units.image_chains is not None:
        chains = {"image": units.image_chains, **chains}
    return per_unit, chains


def score(bench: EmbeddedBenchmark, *, steps: int = DEFAULT_STEPS, resamples: int = DEFAULT_RESAMPLES,
          seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    """Mean and seeded 95% bootstrap CI of every metric."""
    per_unit, _ = per_unit_metrics(bench, steps=steps)
    return summarise_all(per_unit, resamples=resamples, seed=seed)
