"""faiss indexes over unit vectors (inner product = cosine), with defaults by memory size.

| type | what | search knob |
| --- | --- | --- |
| flat | exact | - |
| ivf | inverted lists of full vectors | nprobe |
| hnsw | graph | efSearch |
| ivfpq | inverted lists of 8-bit product codes, re-ranked exactly (IndexRefineFlat) | nprobe, k_factor |
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq")


def default_index_type(count: int) -> str:
    """Exact search while it is cheap; IVF up to a few million items; compressed codes beyond."""
    if count <= 100_000:
        return "flat"
    return "ivf" if count <= 4_000_000 else "ivfpq"


def nlist_for(count: int) -> int:
    return max(1, min(65536, int(4 * math.sqrt(count))))


def default_nprobe(nlist: int) -> int:
    """Lists searched per query by default: 1/30 of them, at least 64. Measured on realistic vectors (a
    power-law spectrum, fresh queries; benchmarks/speed_reco.py): recall@10 0.974 at 50k items (nlist 894,
    nprobe 64) and 0.972 at 1M (nlist 4000, nprobe 128; the default 133 searches more), where the old fixed
    32 gave 0.91 and 0.80. Recall only grows with nprobe."""
    return min(nlist, max(64, nlist // 30))


def build_index(vectors: np.ndarray, kind: str, *, seed: int = 0, nprobe: int | None = None, ef_search: int = 128,
                hnsw_m: int = 32, pq_bytes: int | None = None, train_size: int = 200_000) -> Any:
    """An inner-product faiss index of ``kind`` holding ``vectors`` (float32, unit rows)."""
    import faiss

    if kind not in INDEX_TYPES:
        raise ValueError(f"index type {kind!r}; choose from {', '.join(INDEX_TYPES)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, ip)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = ef_search
    else:
        nlist = nlist_for(count)
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
        else:
            m = pq_bytes or max(1, dim // 8)
            index = faiss.IndexRefineFlat(faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, ip))
            index.k_factor = 4
        sample = vectors
        if count > train_size:
            sample = vectors[np.random.default_rng(seed).choice(count, train_size, replace=False)]
        index.train(sample)
        faiss.extract_index_ivf(index).nprobe = nprobe or default_nprobe(nlist)
    index.add(vectors)
    return index


def set_search_effort(index: Any, *, nprobe: int | None = None, ef_search: int | None = None,
                      k_factor: int | None = None) -> None:
    """Trade speed for recall at search time (k_factor: how many PQ candidates are re-ranked exactly, per k)."""
    import faiss

    if k_factor is not None and hasattr(index, "k_factor"):
        index.k_factor = k_factor
    if nprobe is not None:
        with contextlib.suppress(RuntimeError):
            faiss.extract_index_ivf(index).nprobe = nprobe
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
