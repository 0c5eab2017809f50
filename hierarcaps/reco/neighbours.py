"""Neighbours of many queries in a memory, computed once before training: batched, resumable, on an engine.

Queries are written to ``<side>/queries.npy`` in the given folder; each task searches one block of them (its
rows' groups travel in the task, so a query never retrieves its own group) and writes ``<side>/block-NNNNN.npy``
atomically, so a killed run keeps its finished blocks. A block is claimed only for the same memory, queries,
groups and search settings (``IDENTITY``), so a changed run never reuses stale rows. Under the Ray engine each
actor opens the memory once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from .memory import Memory, vectors_hash
from .memory_build import claim_blocks

BLOCK = 16_384
"""Queries per search task."""


@dataclasses.dataclass
class NeighbourWorker:
    """An engine's worker: the k nearest memory rows of one block of queries (own group excluded)."""

    memory: str
    folder: str
    side: str
    k: int
    cross_modal_search: bool = False
    duplicate_threshold: float | None = None
    opened: Any = None

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        if self.opened is None:
            self.opened = Memory(self.memory)
        folder = Path(self.folder)
        queries = np.load(folder / "queries.npy", mmap_mode="r")[task["start"]:task["end"]]
        _, rows = self.opened.search(np.asarray(queries), self.side, self.k,
                                     cross_modal_search=self.cross_modal_search, exclude_groups=task["groups"],
                                     duplicate_threshold=self.duplicate_threshold)
        with atomic_path(block_file(folder, task["block"])) as tmp, open(tmp, "wb") as handle:
            np.save(handle, rows.astype(np.int64), allow_pickle=False)
        return {"block": task["block"]}


def block_file(folder: Path, block: int) -> Path:
    return folder / f"block-{block:05d}.npy"


def neighbour_rows(memory: Memory, queries: np.ndarray, side: str, k: int, groups: Sequence[str] | None,
                   folder: str | Path, *, engine: Any = None, cross_modal_search: bool = False,
                   duplicate_threshold: float | None = None, progress: bool = False, block: int = BLOCK
                   ) -> np.ndarray:
    """(len(queries), k) memory rows nearest to each query of modality ``side``, computed block by block on
    ``engine`` (a killed run resumes with the unfinished blocks) and kept in ``folder/side``."""
    from ..engines import LocalEngine

    folder = Path(folder) / side
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    names = [str(g) if g is not None else "" for g in groups] if groups is not None else [""] * len(queries)
    identity = json.dumps([memory.content_hash(), vectors_hash(queries, queries[:0]), side, k, cross_modal_search,
                           duplicate_threshold, hashlib.sha256("\0".join(names).encode()).hexdigest(), block])
    claim_blocks(folder, identity)
    source = folder / "queries.npy"
    if not source.exists():
        with atomic_path(source) as tmp, open(tmp, "wb") as handle:
            np.save(handle, queries, allow_pickle=False)
    spans = [(n, start, min(len(queries), start + block)) for n, start in enumerate(range(0, len(queries), block))]
    tasks = [{"block": n, "start": start, "end": end, "groups": names[start:end]} for n, start, end in spans
             if not block_file(folder, n).exists()]
    worker = NeighbourWorker(str(memory.folder), str(folder), side, k, cross_modal_search, duplicate_threshold,
                             memory if engine is None or engine.in_process else None)
    for _ in (engine or LocalEngine()).map(worker, tasks, desc=f"Neighbours ({side})", progress=progress):
        pass
    if not spans:
        return np.zeros((0, k), dtype=np.int64)
    return np.concatenate([np.load(block_file(folder, n), allow_pickle=False) for n, _, _ in spans])
