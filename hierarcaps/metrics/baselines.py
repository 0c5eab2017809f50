"""Reference points shown next to every model: random embeddings and caption length as the radius.

Caption length alone orders tiers well (generic captions are short): a model's d_corr means something
only above these numbers. Lengths tie often ("animal" / "goat"); a tied pair counts as half concordant,
half discordant (Kendall's tau-a, the mean over random tie-breaks), never in tier order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, summarise_all
from .hierarchy import kendall_tau_rows
from .scoring import EmbeddedBenchmark, score

RANDOM_DIM = 512
"""The random baseline's dimension where no model gives one (the board's reference rows)."""

def length_radii(texts: np.ndarray, unit: str) -> np.ndarray:
    """Caption length in characters or words, used in place of the distance to the root."""
    if unit == "chars":
        return np.vectorize(len, otypes=[np.float64])(texts)
    if unit == "words":
        return np.vectorize(lambda t: len(t.split()), otypes=[np.float64])(texts)
    raise ValueError(f"unit must be 'chars' or 'words', not {unit!r}")


def length_baselines(texts: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
                     ) -> dict[str, dict[str, dict[str, Any]]]:
    """d_corr of caption length (characters, words) as the radius, ties counted as half."""
    return {f"length_{unit}": summarise_all({"d_corr": kendall_tau_rows(length_radii(texts, unit))},
                                            resamples=resamples, seed=seed)
            for unit in ("chars", "words")}


def random_baseline(texts: np.ndarray, row_image: np.ndarray | None, n_images: int, *, dim: int = RANDOM_DIM,
                    seed: int = DEFAULT_SEED, resamples: int = DEFAULT_RESAMPLES) -> dict[str, dict[str, Any]]:
    """Every metric for random unit embeddings (one per distinct string, so duplicates stay identical)."""
    rng = np.random.default_rng(seed)

    def unit_vectors(n: int) -> np.ndarray:
        vectors = rng.standard_normal((n, dim))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    distinct, inverse = np.unique(texts.astype(str), return_inverse=True)
    text_emb = unit_vectors(len(distinct))[inverse.reshape(texts.shape)]
    root = unit_vectors(1)[0]
    image_emb = unit_vectors(n_images) if row_image is not None else None
    bench = EmbeddedBenchmark(texts, text_emb, root, image_emb, row_image)
    return score(bench, resamples=resamples, seed=seed)


def all_baselines(texts: np.ndarray, row_image: np.ndarray | None, n_images: int, *, dim: int = RANDOM_DIM,
                  resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> dict[str, dict[str, Any]]:
    return {"random": random_baseline(texts, row_image, n_images, dim=dim, seed=seed, resamples=resamples),
            **length_baselines(texts, resamples=resamples, seed=seed)}
