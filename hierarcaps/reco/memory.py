"""The external memory: paired image and text embeddings with faiss indexes and parquet metadata.

Folder layout::

    manifest.json            dim, count, index type, encoder identity, sources
    image.npy, text.npy      (count, dim) float32 unit rows, opened memory-mapped
    image.faiss, text.faiss  indexes over them
    meta.parquet             id, group, caption, source, image (path or URL) per row
    shards/                  per-shard embeddings + DONE markers while building (resumable)

Search is uni-modal with cross-modal fusion by default (an image query finds memory images and returns
their paired texts); cross-modal search and uni-modal fusion are there for ablations. Every memory row of
the query's own group (its image: the other captions of the same picture are the answer) and near-duplicates
above a similarity threshold are excluded, so an item never retrieves itself or a sibling of itself.
The manifest records a content hash of the vectors, so a rebuilt memory is a different memory to any cache.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open, atomic_path
from ..errors import HierarcapsError
from .index import build_index, default_index_type

MODALITIES = ("image", "text")


@dataclasses.dataclass
class MemoryItem:
    id: str
    caption: str
    image: Any = None          # path, URL or PIL image; None when embeddings are given
    source: str = ""
    group: str = ""            # items of one group (one image) never retrieve each other; default: the id

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
        self.manifest = json.loads(manifest_path.read_text())
        mode = "r" if mmap else None
        self.vectors = {m: np.load(self.folder / f"{m}.npy", mmap_mode=mode, allow_pickle=False) for m in MODALITIES}
        flags = faiss.IO_FLAG_MMAP if mmap and self.manifest["index"] != "flat" else 0
        self.indexes = {m: faiss.read_index(str(self.folder / f"{m}.faiss"), flags) for m in MODALITIES}
        self.meta = pq.read_table(self.folder / "meta.parquet")
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
               exclude_groups: Sequence[str | None] | None = None, duplicate_threshold: float = 0.98
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k nearest memory items per query; rows of the query's group (``exclude_groups``,
        one per query: its image id, say) and near-duplicates are excluded.

        Uni-modal search compares the query with memory items of its own modality; ``cross_modal_search``
        compares it with the other modality instead.
        """
        searched = query_modality if not cross_modal_search else other(query_modality)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        keep_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        keep_rows = np.full((len(queries), k), -1, dtype=np.int64)
        pending = np.arange(len(queries))
        fetch = k + 8
        while len(pending):
            fetch = min(fetch, len(self))
            scores, rows = self.indexes[searched].search(queries[pending], fetch)
            short = []
            for position, q in enumerate(pending):
                group = self.code_of.get(exclude_groups[q], -1) if exclude_groups is not None and exclude_groups[q] \
                    else -1
                valid = rows[position] >= 0
                mask = valid & (self.group_codes[np.where(valid, rows[position], 0)] != group) \
                    & (scores[position] < duplicate_threshold)
                chosen = np.flatnonzero(mask)[:k]
                if len(chosen) < k and fetch < len(self):
                    short.append(q)       # too many excluded: search deeper for this query
                    continue
                keep_scores[q, :len(chosen)] = scores[position, chosen]
                keep_rows[q, :len(chosen)] = rows[position, chosen]
            pending, fetch = np.array(short, dtype=np.int64), fetch * 4
        if (keep_rows < 0).any():
            raise HierarcapsError(f"the memory holds fewer than k={k} usable neighbours for some queries "
                                  f"(own group and near-duplicates above {duplicate_threshold} excluded); lower k")
        return keep_scores, keep_rows

    def neighbours(self, queries: np.ndarray, query_modality: str, k: int, *, fuse: str = "cross",
                   cross_modal_search: bool = False, exclude_groups: Sequence[str | None] | None = None,
                   duplicate_threshold: float = 0.98) -> np.ndarray:
        """(Q, k, d) embeddings to fuse: the paired other modality (``fuse="cross"``, RECO) or the same one."""
        _, rows = self.search(queries, query_modality, k, cross_modal_search=cross_modal_search,
                              exclude_groups=exclude_groups, duplicate_threshold=duplicate_threshold)
        fused = other(query_modality) if fuse == "cross" else query_modality
        return np.asarray(self.vectors[fused])[rows]

    def stats(self) -> dict[str, Any]:
        sizes = {p.name: p.stat().st_size for p in self.folder.iterdir() if p.is_file()}
        return {"items": len(self), "dim": self.manifest["dim"], "index": self.manifest["index"],
                "bytes_per_item": sum(sizes.values()) / max(1, len(self)), "files": sizes,
                "sources": self.manifest.get("sources", {}), "encoder": self.manifest.get("encoder")}


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


def write_memory(folder: str | Path, image: np.ndarray, text: np.ndarray, items: Sequence[MemoryItem], *,
                 index: str | None = None, encoder: dict[str, Any] | None = None) -> Path:
    """Write a memory from embeddings (the last step of every build), atomically per file, manifest last."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not (len(image) == len(text) == len(items)):
        raise HierarcapsError(f"{len(image)} image and {len(text)} text embeddings for {len(items)} items")
    if len({item.id for item in items}) != len(items):
        raise HierarcapsError("memory item ids must be unique")
    kind = index or default_index_type(len(items))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)     # the memory is incomplete until it is rewritten
    units = {}
    for name, array in (("image", image), ("text", text)):
        units[name] = (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, units[name], allow_pickle=False)
        with atomic_path(folder / f"{name}.faiss") as tmp:
            faiss.write_index(build_index(units[name], kind), str(tmp))
    table = pa.table({"id": [i.id for i in items], "group": [i.group_key() for i in items],
                      "caption": [i.caption for i in items],
                      "source": [i.source for i in items],
                      "image": [i.image if isinstance(i.image, str) else None for i in items]})
    with atomic_path(folder / "meta.parquet") as tmp:
        pq.write_table(table, tmp)
    sources: dict[str, int] = {}
    for item in items:
        sources[item.source] = sources.get(item.source, 0) + 1
    with atomic_open(folder / "manifest.json") as handle:
        json.dump({"dim": int(image.shape[1]), "count": len(items), "index": kind, "encoder": encoder,
                   "sources": sources, "content_hash": vectors_hash(units["image"], units["text"])}, handle,
                  indent=2)
    return folder


def build_memory(folder: str | Path, items: Sequence[MemoryItem], encoder: Any, *, shard_size: int = 10_000,
                 index: str | None = None, progress: bool = True, image_batch_size: int = 64,
                 workers: int = 1) -> Path:
    """Embed items with a frozen encoder, shard by shard (each shard kept once done), then index them.

    Killed at any point, a re-run skips the finished shards and produces the same memory.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    shards = folder / "shards"
    starts = range(0, len(items), shard_size)
    for number, start in enumerate(tqdm(starts, desc="Memory shards", disable=not progress, unit="shard")):
        shard = shards / f"shard-{number:05d}"
        if (shard / "DONE").exists():
            continue
        chunk = items[start:start + shard_size]
        shutil.rmtree(shard, ignore_errors=True)
        shard.mkdir(parents=True)
        np.save(shard / "text.npy", encoder.encode_text([i.caption for i in chunk]), allow_pickle=False)
        np.save(shard / "image.npy", encoder.encode_image([i.image for i in chunk], batch_size=image_batch_size,
                                                          workers=workers), allow_pickle=False)
        (shard / "DONE").write_text(str(len(chunk)))
    parts = [shards / f"shard-{n:05d}" for n in range(len(starts))]
    image = np.concatenate([np.load(p / "image.npy") for p in parts])
    text = np.concatenate([np.load(p / "text.npy") for p in parts])
    identity = {"name": encoder.name, "fingerprint": encoder.fingerprint()}
    write_memory(folder, image, text, items, index=index, encoder=identity)
    shutil.rmtree(shards, ignore_errors=True)
    return folder
