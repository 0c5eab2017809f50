"""faiss indexes over unit vectors (inner product = cosine), with defaults by memory size.

| type | what | search knob |
| --- | --- | --- |
| flat | exact | - |
| ivf | inverted lists of full vectors | nprobe |
| hnsw | graph | efSearch |
| ivfpq | inverted lists of 8-bit product codes, re-ranked exactly (IndexRefineFlat) | nprobe, k_factor |
| ivffs | inverted lists of 4-bit fast-scan codes (dim/4 bytes an item), re-ranked from the vectors | nprobe |

On disk (``ivf`` and ``ivfpq`` only, for memories larger than RAM): an index is trained on a sample, filled
block by block (each block an index file of its own, so blocks can be added on many machines), and the
blocks' inverted lists are merged into one ``.ivfdata`` file that search memory-maps. The PQ variant keeps
no copy of the vectors: the memory re-ranks its candidates from its own memory-mapped vectors.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from ..errors import HierarcapsError

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq", "ivffs")
IVF_TYPES = ("ivf", "ivfpq", "ivffs")
ON_DISK_TYPES = ("ivf", "ivfpq")          # inverted lists faiss can memory-map from one file
RERANK_FACTOR = 64
"""PQ candidates re-scored exactly per result. Measured on power-law vectors with 64-byte codes
(benchmarks/scale_memory.py, fresh queries): at 10M items and the default nprobe 421, recall@10 0.632 with 4,
0.867 with 16, 0.930 with 32, 0.972 with 64, 0.984 with 128; at 200k items, nprobe 128: 0.837 with 4, 0.973
with 16. More lists do not make up for fewer candidates (10M, factor 16: 0.850 at nprobe 128, 0.868 at 842)."""


FAST_SCAN_FROM = 1_000_000
FAST_SCAN_RERANK = 16
"""Fast-scan candidates re-scored exactly per result. Measured at 1M power-law vectors, fresh queries, 2 cores
(benchmarks/fast_index.py): at the default nprobe 133, 8 / 16 / 32 candidates give recall@10 0.958 / 0.970 /
0.972 at 2,565 / 2,065 / 1,401 batched queries/s; IVF with full vectors at the same nprobe: 0.972 at 200. At
10M, nprobe 421: 0.939 / 0.979 / 0.990 at 364 / 367 / 360 (scanning the lists dominates there)."""


def default_index_type(count: int, on_disk: bool = False) -> str:
    """Exact search while it is cheap; IVF to FAST_SCAN_FROM items; fast-scan codes, re-ranked exactly, beyond.
    On disk (lists memory-mapped, for memories larger than RAM): IVF to 4M items, IVF-PQ beyond."""
    if on_disk:
        return "ivf" if count <= 4_000_000 else "ivfpq"
    if count <= 100_000:
        return "flat"
    return "ivf" if count < FAST_SCAN_FROM else "ivffs"


def rerank_factor(kind: str, on_disk: bool) -> int:
    """Candidates per result a memory re-scores exactly from its own vectors (0: the index's scores stand)."""
    if kind == "ivffs":
        return FAST_SCAN_RERANK
    return RERANK_FACTOR if on_disk and kind == "ivfpq" else 0


def nlist_for(count: int) -> int:
    return max(1, min(65536, int(4 * math.sqrt(count))))


def fewest_items(kind: str, count: int) -> int:
    """The fewest items an index of ``kind`` can be trained on: one per inverted list for IVF, and for product
    codes one per code value as well (256 for 8-bit codes, 16 for 4-bit fast-scan codes)."""
    if kind not in IVF_TYPES:
        return 1
    return max(nlist_for(count), {"ivf": 1, "ivfpq": 256, "ivffs": 16}[kind])


def check_index_size(kind: str, count: int) -> None:
    """Refuse, in one line, an index type that cannot be trained on ``count`` items."""
    if count < fewest_items(kind, count):
        raise HierarcapsError(f"--index {kind} needs at least {fewest_items(kind, count)} items to train on, and the "
                              f"memory has {count}; choose --index flat (exact search, the default at this size)")


def default_nprobe(nlist: int) -> int:
    """Lists searched per query by default: 1/30 of them, at least 64. Measured on realistic vectors (a
    power-law spectrum, fresh queries; benchmarks/speed_reco.py): recall@10 0.974 at 50k items (nlist 894,
    nprobe 64) and 0.972 at 1M (nlist 4000, nprobe 128; the default 133 searches more), where the old fixed
    32 gave 0.91 and 0.80. Recall only grows with nprobe."""
    return min(nlist, max(64, nlist // 30))


ADD_CHUNK = 1 << 20                       # rows added to an index at once


def build_index(vectors: np.ndarray, kind: str, *, seed: int = 0, nprobe: int | None = None, ef_search: int = 128,
                hnsw_m: int = 32, pq_bytes: int | None = None, train_size: int = 200_000) -> Any:
    """An inner-product faiss index of ``kind`` holding ``vectors`` (float32, unit rows)."""
    import faiss

    if kind not in INDEX_TYPES:
        raise ValueError(f"index type {kind!r}; choose from {', '.join(INDEX_TYPES)}")
    dim = vectors.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, ip)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = ef_search
    else:
        index = trained_ivf(vectors, kind, seed=seed, nprobe=nprobe, pq_bytes=pq_bytes, train_size=train_size)
        if kind == "ivfpq":
            index = faiss.IndexRefineFlat(index)
            index.k_factor = RERANK_FACTOR
    for start in range(0, len(vectors), ADD_CHUNK):          # a memory-mapped memory is read a chunk at a time
        index.add(np.ascontiguousarray(vectors[start:start + ADD_CHUNK], dtype=np.float32))
    if kind in IVF_TYPES:
        set_quantizer_effort(index)
    return index


HNSW_QUANTIZER_LISTS = 8192
"""From this many lists (about 4.2M items) the coarse quantizer is an HNSW graph over the centroids: assigning
a vector then costs a few hundred comparisons instead of one per list, which is what makes filling an index of
billions of items affordable (a flat quantizer at 65,536 lists costs 67 MFLOP per vector)."""
QUANTIZER_ADD_EF = 64                      # graph search effort when assigning vectors to lists (one list each)


def trained_ivf(vectors: np.ndarray, kind: str, *, seed: int = 0, nprobe: int | None = None,
                pq_bytes: int | None = None, train_size: int = 200_000) -> Any:
    """An empty IVF (``ivf``) or IVF-PQ (``ivfpq``) index trained on a seeded sample of ``vectors`` (which may
    be memory-mapped: only the sample is read), sized for all of them. Training gives the same bytes on every
    run: k-means is seeded, and a graph quantizer is built on one thread."""
    import faiss

    count, dim = vectors.shape
    nlist, ip = nlist_for(count), faiss.METRIC_INNER_PRODUCT
    rows = np.arange(count) if count <= train_size else \
        np.sort(np.random.default_rng(seed).choice(count, train_size, replace=False))
    sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    quantizer = faiss.IndexFlatIP(dim) if nlist < HNSW_QUANTIZER_LISTS else graph_quantizer(sample, nlist, seed)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    elif kind == "ivffs":
        index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, fast_scan_subquantizers(dim), 4, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_bytes or max(1, dim // 8), 8, ip)
    index.own_fields = True
    quantizer.this.disown()                 # the index frees its quantizer
    index.train(sample)                     # a graph quantizer already holds its centroids: only PQ trains
    index.nprobe = nprobe or default_nprobe(nlist)
    return index


def fast_scan_subquantizers(dim: int) -> int:
    """One 4-bit code per two dimensions: the largest even divisor of ``dim`` up to dim/2 (fast-scan packs codes
    in pairs, and each sub-quantizer takes an equal slice of the vector). Coarser codes lose the neighbours
    re-ranking is meant to find: at 1M power-law vectors, nprobe 133, 16 candidates per result, recall@10 is
    0.970 with dim/2 codes and 0.645 with dim/8 (benchmarks/results/fast_index_1000000*.json)."""
    found = [m for m in range(2, max(2, dim // 2) + 1, 2) if dim % m == 0]
    if not found:
        raise HierarcapsError(f"a fast-scan index needs an even dimension, not {dim}; choose --index ivf or ivfpq")
    return found[-1]


def graph_quantizer(sample: np.ndarray, nlist: int, seed: int) -> Any:
    """Spherical k-means centroids of ``sample`` in an HNSW graph (built on one thread: the same graph on
    every run), searched with ``QUANTIZER_ADD_EF`` while vectors are added."""
    import faiss

    clustering = faiss.Clustering(sample.shape[1], nlist)
    clustering.spherical, clustering.seed = True, seed
    clustering.train(sample, faiss.IndexFlatIP(sample.shape[1]))
    graph = faiss.IndexHNSWFlat(sample.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 80
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        graph.add(faiss.vector_to_array(clustering.centroids).reshape(nlist, -1))
    finally:
        faiss.omp_set_num_threads(threads)
    graph.hnsw.efSearch = QUANTIZER_ADD_EF
    return graph


def faiss_quantizer(index: Any) -> Any:
    """The coarse quantizer of an IVF index (wrapped or not), as its own class."""
    import faiss

    return faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)


def set_quantizer_effort(index: Any) -> None:
    """A graph quantizer searches twice as deep as the lists it must find (at least 128)."""
    import faiss

    quantizer = faiss_quantizer(index)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(128, 2 * faiss.extract_index_ivf(index).nprobe)


def add_block(trained: Any, vectors: np.ndarray, first_id: int) -> Any:
    """A copy of an empty trained IVF index holding ``vectors`` under ids ``first_id, first_id + 1, ...``."""
    import faiss

    block = faiss.clone_index(trained)
    block.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                       np.arange(first_id, first_id + len(vectors), dtype=np.int64))
    return block


def merge_on_disk(trained: Any, block_files: list[str], index_file: str, ivfdata_file: str, data_name: str) -> None:
    """Merge the blocks' inverted lists, in block order, into ``ivfdata_file`` and write the index to
    ``index_file``; the index names its data file ``data_name`` (the file's final name beside it: read it with
    ``faiss.IO_FLAG_ONDISK_SAME_DIR``), so a moved folder still opens and two builds write the same bytes."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    index = faiss.clone_index(trained)
    merge_ondisk(index, block_files, ivfdata_file)
    set_quantizer_effort(index)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    invlists.filename = data_name
    faiss.write_index(index, index_file)
    invlists.filename = ivfdata_file              # the lists are freed with the index: let them find their file


def set_search_effort(index: Any, *, nprobe: int | None = None, ef_search: int | None = None,
                      k_factor: int | None = None) -> None:
    """Trade speed for recall at search time (k_factor: how many PQ candidates are re-ranked exactly, per k)."""
    import faiss

    if k_factor is not None and hasattr(index, "k_factor"):
        index.k_factor = k_factor
    if nprobe is not None:
        with contextlib.suppress(RuntimeError):
            faiss.extract_index_ivf(index).nprobe = nprobe
            set_quantizer_effort(index)
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = ef_search
