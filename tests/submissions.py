"""Submissions of random unit vectors for the board's tests: one maker that every test module shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hierarcaps.data import load_official
from hierarcaps.leaderboard.submission import write_submission

MODEL = {"name": "random-16", "revision": "r1", "parameters": 1, "licence": "mit", "link": "https://example.org",
         "training_data": "none"}


def unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    """``n`` random unit vectors."""
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def random_submission(folder: Path, *, seed: int = 0, dim: int = 16, **model: Any) -> Path:
    """A valid submission (text and images) of random embeddings, with ``model`` fields over :data:`MODEL`."""
    rng = np.random.default_rng(seed)
    return write_submission(folder, load_official("test"), unit(rng, 1, dim)[0], unit(rng, 4000, dim),
                            unit(rng, 1000, dim), {"model": {**MODEL, **model},
                                                   "test_set_not_used_for_training_or_tuning": True})
