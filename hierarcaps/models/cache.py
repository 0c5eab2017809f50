"""On-disk embedding cache: a re-run with the same model, preprocessing and inputs reads instead of computes.

The key hashes the model fingerprint, its preprocessing, the kind of input and the exact input list
(texts, or image file names with their SHA-256), so any change to one of them is a miss. Files are plain
``.npy`` (read with ``allow_pickle=False``) written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from ..data.fetch import cache_dir


def cache_key(encoder_fingerprint: str, preprocessing: dict[str, Any], kind: str, inputs_checksum: str) -> str:
    payload = json.dumps([encoder_fingerprint, preprocessing, kind, inputs_checksum], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def checksum_strings(items: list[str]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


class EmbeddingCache:
    """Get-or-compute for arrays, stored under ``<cache>/embeddings`` (or a folder of your choice)."""

    def __init__(self, folder: str | Path | None = None, *, enabled: bool = True) -> None:
        self.folder = Path(folder) if folder else cache_dir() / "embeddings"
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.folder / f"{key}.npy"
        if self.enabled and path.exists():
            self.hits += 1
            return np.load(path, allow_pickle=False)
        self.misses += 1
        array = compute()
        if self.enabled:
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        return array
