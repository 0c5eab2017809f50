"""The external memory, read side: paired image and text embeddings with faiss indexes and parquet metadata,
opened memory-mapped and searched. ``memory_build`` writes memories.

Folder layout::

    manifest.json            dim, count, index type (and whether on disk), encoder identity, sources
    image.npy, text.npy      (count, dim) float32 unit rows, opened memory-mapped
    image.faiss, text.faiss  indexes over them
    image.ivfdata, ...       on-disk inverted lists (``on_disk`` IVF / IVF-PQ), memory-mapped by search
    meta.parquet             id, group, caption, source, image (path or URL) per row

Search is uni-modal with cross-modal fusion by default (an image query finds memory images and returns
their paired texts); cross-modal search and uni-modal fusion are there for ablations. Every memory row of
the query's own group (its image: the other captions of the same picture are the answer) and near-duplicates
above a similarity threshold are excluded, so an item never retrieves itself or a sibling of itself.
The manifest records a content hash of the vectors, so a rebuilt memory is a different memory to any cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HierarcapsError
from ..models.folders import read_json_object
from .index import rerank_factor

MODALITIES = ("image", "text")


@dataclasses.dataclass
class MemoryItem:
    id: str
    caption: str
    image: Any = None          # path, URL or PIL image; None when embeddings are given
    source: str = ""
    group: str = ""            # items of one group (one image) never retrieve each other; default: the id
    label: str = ""            # a class label, where the source has one (the supervised objective)

    def group_key(self) -> str:
        return self.group or self.id


class Memory:
    """An opened memory folder."""

    def __init__(self, folder: str | Path, *, mmap: bool = True) -> None:
        import faiss
        import pyarrow.parquet as pq

        self.folder = Path(folder)
        manifest_path = self.folder / "manifest.json"
        if not manifest_path.exists():
            raise HierarcapsError(f"{self.folder} is not a built memory (no manifest.json)")
        self.manifest = read_json_object(manifest_path, what="memory manifest")
        mode = "r" if mmap else None
        self.vectors = {m: open_vectors(self.folder / f"{m}.npy", mode) for m in MODALITIES}
        check_shapes(self.folder, self.manifest, self.vectors)
        self.on_disk = bool(self.manifest.get("on_disk"))
        self.rerank = rerank_factor(self.manifest["index"], self.on_disk)
        flags = faiss.IO_FLAG_MMAP if mmap and self.manifest["index"] != "flat" else 0
        if self.on_disk:            # the lists are memory-mapped by the index itself (with IO_FLAG_MMAP it crashes)
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR
        self.indexes = {m: read_faiss(self.folder / f"{m}.faiss", flags) for m in MODALITIES}
        for modality, index in self.indexes.items():
            if index.d != self.manifest["dim"] or index.ntotal != self.manifest["count"]:
                raise HierarcapsError(f"{self.folder / modality}.faiss: holds {index.ntotal} vectors of dimension "
                                      f"{index.d}; the memory has {self.manifest['count']} of {self.manifest['dim']}")
        self.meta = pq.read_table(self.folder / "meta.parquet")
        if self.meta.num_rows != len(self) or "id" not in self.meta.column_names:
            raise HierarcapsError(f"{self.folder / 'meta.parquet'}: {self.meta.num_rows} rows for the memory's "
                                  f"{len(self)} items (or no id column); rebuild the memory")
        self.ids = self.meta.column("id").to_pylist()
        groups = self.meta.column("group").to_pylist() if "group" in self.meta.column_names else self.ids
        self.groups = [g or i for g, i in zip(groups, self.ids)]
        codes, self.group_codes = np.unique(np.asarray(self.groups, dtype=object).astype(str), return_inverse=True)
        self.code_of = {g: c for c, g in enumerate(codes.tolist())}

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def content_hash(self) -> str:
        """The manifest's hash of the vectors (older memories: one computed now)."""
        return self.manifest.get("content_hash") or vectors_hash(self.vectors["image"], self.vectors["text"])

    def search(self, queries: np.ndarray, query_modality: str, k: int, *, cross_modal_search: bool = False,
               exclude_groups: Sequence[str | None] | None = None, duplicate_threshold: float | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k nearest memory items per query. ``exclude_groups`` (one per query: its image
        id, say) keeps each query's own group out, as training must (its other captions are the answer);
        ``duplicate_threshold`` keeps out items at least that similar. At inference neither applies: items of
        the evaluation set are removed from the memory when it is built, as RECO does.

        Uni-modal search compares the query with memory items of its own modality; ``cross_modal_search``
        compares it with the other modality instead. Results do not depend on the thread count or on how an
        index orders equal scores: candidates are ranked by score to 6 decimals, then by row, a query whose
        k-th neighbour ties with the last candidate fetched is searched deeper until the tie ends, and the
        scores returned are computed from the memory's own vectors.
        """
        if k > len(self):
            raise HierarcapsError(f"k={k} neighbours asked of a memory of {len(self)} items; lower k")
        searched = query_modality if not cross_modal_search else other(query_modality)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        excluded = np.array([self.code_of.get(g, -1) if g else -1 for g in exclude_groups]) \
            if exclude_groups is not None else np.full(len(queries), -1)
        threshold = np.inf if duplicate_threshold is None else duplicate_threshold
        keep_rows = np.full((len(queries), k), -1, dtype=np.int64)
        pending, fetch = np.arange(len(queries)), k + 8
        while len(pending):
            fetch = min(fetch, len(self))
            scores, rows = self.nearest(searched, queries[pending], fetch)
            scores, rows = stable_order(scores, rows)
            valid = rows >= 0
            own = self.group_codes[np.where(valid, rows, 0)] == excluded[pending, None]
            mask = valid & ~own & (scores < threshold)
            enough = mask.sum(axis=1) >= k
            first = np.argsort(~mask, axis=1, kind="stable")[:, :k]      # the first k kept, in rank order
            chosen = np.take_along_axis(mask, first, axis=1)
            last_kept = np.take_along_axis(tie_key(scores), first[:, -1:], axis=1)[:, 0]
            tied_past = enough & (last_kept == tie_key(scores)[:, -1]) & (fetch < len(self))
            done = (enough & ~tied_past) | (fetch >= len(self))
            keep_rows[pending[done]] = np.where(chosen, np.take_along_axis(rows, first, axis=1), -1)[done]
            pending, fetch = pending[~done], fetch * 4          # too many excluded, or a tie past the cut: deeper
        if (keep_rows < 0).any():
            raise HierarcapsError(f"the memory holds fewer than k={k} usable neighbours for some queries "
                                  f"(own group and near-duplicates above {duplicate_threshold} excluded); lower k")
        found = np.asarray(self.vectors[searched])[keep_rows]
        return np.einsum("qd,qkd->qk", queries, found).astype(np.float32), keep_rows

    def nearest(self, modality: str, queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's ``count`` best rows per query (a fast-scan or on-disk IVF-PQ index's re-scored exactly)."""
        if not self.rerank:
            return self.indexes[modality].search(queries, count)
        return reranked_search(self.indexes[modality], self.vectors[modality], queries, count, self.rerank)

    def neighbours(self, queries: np.ndarray, query_modality: str, k: int, *, fuse: str = "cross",
                   cross_modal_search: bool = False, exclude_groups: Sequence[str | None] | None = None,
                   duplicate_threshold: float | None = None) -> np.ndarray:
        """(Q, k, d) embeddings to fuse: the paired other modality (``fuse="cross"``, RECO) or the same one."""
        _, rows = self.search(queries, query_modality, k, cross_modal_search=cross_modal_search,
                              exclude_groups=exclude_groups, duplicate_threshold=duplicate_threshold)
        fused = other(query_modality) if fuse == "cross" else query_modality
        return np.asarray(self.vectors[fused])[rows]

    def stats(self) -> dict[str, Any]:
        sizes = {p.name: p.stat().st_size for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")}
        return {"items": len(self), "dim": self.manifest["dim"], "index": self.manifest["index"],
                "bytes_per_item": sum(sizes.values()) / max(1, len(self)), "files": sizes,
                "sources": self.manifest.get("sources", {}), "encoder": self.manifest.get("encoder")}


def open_vectors(path: Path, mode: str | None) -> np.ndarray:
    """A memory's vector file (no pickles), or one line saying why it cannot be one."""
    try:
        vectors = np.load(path, mmap_mode=mode, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise HierarcapsError(f"{path}: not a readable vector file ({' '.join(str(exc).split())[:120]})") from None
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise HierarcapsError(f"{path}: {vectors.dtype} array of shape {vectors.shape}; a memory holds (count, dim) "
                              "float32 rows")
    return vectors


def check_shapes(folder: Path, manifest: dict[str, Any], vectors: dict[str, np.ndarray]) -> None:
    """The manifest's count and dimension against both vector files (a memory assembled from parts of different
    builds would pair the wrong rows)."""
    count, dim = manifest.get("count"), manifest.get("dim")
    for modality, array in vectors.items():
        if array.shape != (count, dim):
            raise HierarcapsError(f"{folder / modality}.npy: shape {array.shape}, but the manifest says "
                                  f"({count}, {dim}); rebuild the memory")


def read_faiss(path: Path, flags: int) -> Any:
    import faiss

    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise HierarcapsError(f"{path}: not a readable faiss index ({str(exc).splitlines()[0][:120]})") from None


RERANK_CHUNK_ROWS = 1 << 16             # candidate vectors gathered at once (128 MiB at 512 dimensions)


def reranked_search(index: Any, vectors: np.ndarray, queries: np.ndarray, count: int, factor: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows): ``factor * count`` candidates per query from a compressed index, re-scored exactly
    from ``vectors`` (memory-mapped: only the candidates' rows are read), best ``count`` kept."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, candidates = index.search(queries, min(len(vectors), count * factor))
    exact = np.empty(candidates.shape, dtype=np.float32)
    per_chunk = max(1, RERANK_CHUNK_ROWS // candidates.shape[1])
    for start in range(0, len(queries), per_chunk):
        rows = candidates[start:start + per_chunk]
        wanted, place = np.unique(np.maximum(rows, 0), return_inverse=True)     # read in file order, once each
        block = np.asarray(vectors[wanted], dtype=np.float32)[place.reshape(rows.shape)]
        similarity = np.matmul(block, queries[start:start + per_chunk, :, None])[..., 0]
        exact[start:start + per_chunk] = np.where(rows >= 0, similarity, -np.inf)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :count]
    scores = np.take_along_axis(exact, order, axis=1)
    return scores, np.where(np.isfinite(scores), np.take_along_axis(candidates, order, axis=1), -1)


TIE_DECIMALS = 6
"""Scores equal to this many decimals are a tie (identical vectors score alike up to the last bits, which an
index's thread count can change), broken by memory row."""


def tie_key(scores: np.ndarray) -> np.ndarray:
    return np.round(scores.astype(np.float64), TIE_DECIMALS)


def stable_order(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's candidates by descending score (to ``TIE_DECIMALS``), equal scores by ascending row; missing
    candidates (row -1) last."""
    key = np.where(rows >= 0, -tie_key(scores), np.inf)
    order = np.lexsort((np.where(rows >= 0, rows, np.iinfo(np.int64).max), key), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def other(modality: str) -> str:
    return "text" if modality == "image" else "image"


def vectors_hash(image: np.ndarray, text: np.ndarray) -> str:
    """xxh3-128 of both vector arrays (shape, dtype, bytes): a memory's content identity."""
    import xxhash

    digest = xxhash.xxh3_128()
    for array in (image, text):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}:{array.dtype};".encode())
        for start in range(0, len(array), 65536):
            digest.update(array[start:start + 65536].tobytes())
    return "xxh3:" + digest.hexdigest()
