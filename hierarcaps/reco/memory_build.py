"""The external memory, write side: a memory folder written from embeddings in RAM (``write_memory``) or built
from items with a frozen encoder (``build_memory``), and its indexes (flat, HNSW, or IVF / IVF-PQ on disk).

While building, the folder also holds::

    shards/                  per-shard embeddings + DONE markers (resumable)
    blocks/                  per-block on-disk index parts (resumable)

Embedding shards and index blocks run on an engine (``hierarcaps.engines``): in this process, or on Ray
actors that each load the encoder once; either engine writes the same bytes. A killed build resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open, atomic_path
from ..engines import LocalEngine
from ..errors import HierarcapsError
from ..outputs import claim_folder, folder_lock
from .index import (
    ON_DISK_TYPES,
    add_block,
    build_index,
    check_index_size,
    default_index_type,
    merge_on_disk,
    trained_ivf,
)
from .memory import MODALITIES, MemoryItem, vectors_hash


@dataclasses.dataclass
class BuildOptions:
    """How a memory is built: its index (``None``: by size), whether it lives on disk (IVF / IVF-PQ filled in
    blocks of ``block_size`` rows on ``engine``, trained on ``train_size`` sampled vectors), and the evaluation
    items it must not hold: memory items whose image or text is at least ``exclude_threshold`` similar to any
    vector of ``exclude`` (per modality) are dropped, as RECO removes near-duplicates of evaluation images."""

    index: str | None = None
    on_disk: bool = False
    block_size: int = 100_000
    train_size: int = 200_000
    engine: Any = None
    progress: bool = False
    exclude: dict[str, np.ndarray] | None = None
    exclude_threshold: float = 0.98


MEMORY_KIND = "reco memory"


@contextlib.contextmanager
def writing_memory(folder: str | Path) -> Iterator[Path]:
    """A memory folder held for writing: new, empty or a memory (``outputs.claim_folder``), under its lock, so
    two builds into one folder take turns and each leaves a memory of its own source."""
    folder = claim_folder(folder, MEMORY_KIND)
    with folder_lock(folder, what=f"the memory {folder}"):
        yield folder


def write_memory(folder: str | Path, image: np.ndarray, text: np.ndarray, items: Sequence[MemoryItem],
                 options: BuildOptions | None = None, *, encoder: dict[str, Any] | None = None) -> Path:
    """Write a memory from embeddings in RAM, atomically per file, manifest last."""
    if not (len(image) == len(text) == len(items)):
        raise HierarcapsError(f"{len(image)} image and {len(text)} text embeddings for {len(items)} items")
    if not items:
        raise HierarcapsError("the memory would hold no items (the source is empty)")
    with writing_memory(folder) as folder:
        return assemble_memory(folder, {"image": [image], "text": [text]}, meta_table(items),
                               options or BuildOptions(), encoder=encoder)


def meta_table(items: Sequence[MemoryItem]) -> Any:
    """meta.parquet's table: id, group, caption, source and image (path or URL) per item."""
    import pyarrow as pa

    return pa.table({"id": [i.id for i in items], "group": [i.group_key() for i in items],
                     "caption": [i.caption for i in items], "source": [i.source for i in items],
                     "image": [i.image if isinstance(i.image, str) else None for i in items]})


def assemble_memory(folder: str | Path, parts: dict[str, Sequence[Any]], meta: Any, options: BuildOptions, *,
                    encoder: dict[str, Any] | None = None) -> Path:
    """Write a memory whose vectors come in parts per modality (arrays, or .npy paths read one at a time, so
    the vectors never need to fit in RAM at once), with ``meta`` (a table with id, group, caption, source,
    image columns) for its rows, built as ``options`` say."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = Path(folder)
    if meta.num_rows == 0:
        raise HierarcapsError("the memory would hold no items (the source is empty)")
    if pc.count_distinct(meta.column("id")).as_py() != meta.num_rows:
        raise HierarcapsError("memory item ids must be unique")
    keep = kept_rows(parts, meta.num_rows, options)
    meta, count = meta.filter(pa.array(keep)), int(keep.sum())
    if count == 0:
        raise HierarcapsError("the memory would hold no items (every item is a near-duplicate of an evaluation item)")
    kind = options.index or default_index_type(count, options.on_disk)
    check_index_size(kind, count)
    if options.on_disk and kind not in ON_DISK_TYPES:
        raise HierarcapsError(f"on-disk indexes are IVF or IVF-PQ, not {kind!r}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)     # the memory is incomplete until it is rewritten
    dims = {name: write_unit_vectors(folder / f"{name}.npy", parts[name], count, keep) for name in MODALITIES}
    if len(set(dims.values())) != 1:
        raise HierarcapsError(f"image vectors have dimension {dims['image']} and text vectors {dims['text']}: "
                              "a memory pairs the two sides of one encoder")
    blocks = [(start, min(count, start + options.block_size)) for start in range(0, count, options.block_size)]
    vectors = {m: np.load(folder / f"{m}.npy", mmap_mode="r") for m in MODALITIES}
    content = vectors_hash(vectors["image"], vectors["text"])
    if options.on_disk:
        claim_blocks(folder / "blocks", f"{content} {kind} {blocks}")
    for name in MODALITIES:
        if options.on_disk:
            write_on_disk_index(folder, name, vectors[name], kind, blocks, options)
        else:
            import faiss

            with atomic_path(folder / f"{name}.faiss") as tmp:
                index = build_index(np.asarray(vectors[name]), kind, train_size=options.train_size)
                faiss.write_index(index, str(tmp))
    shutil.rmtree(folder / "blocks", ignore_errors=True)
    with atomic_path(folder / "meta.parquet") as tmp:
        pq.write_table(meta, tmp)
    sources = {str(k): int(v) for k, v in zip(*np.unique(meta.column("source").to_numpy(zero_copy_only=False),
                                                         return_counts=True))}
    with atomic_open(folder / "manifest.json") as handle:
        json.dump({"dim": dims["image"], "count": count, "index": kind, "on_disk": options.on_disk,
                   "encoder": encoder, "sources": sources, "content_hash": content,
                   "removed_near_evaluation_items": int(len(keep) - count)}, handle, indent=2)
    return folder


def kept_rows(parts: dict[str, Sequence[Any]], count: int, options: BuildOptions) -> np.ndarray:
    """Which rows the memory keeps: all, but those whose image or text is a near-duplicate of an evaluation
    item (cosine at least ``options.exclude_threshold``)."""
    keep = np.ones(count, dtype=bool)
    for modality, excluded in (options.exclude or {}).items():
        if len(excluded) == 0:
            continue
        excluded = np.asarray(excluded, dtype=np.float64)
        excluded = excluded / np.linalg.norm(excluded, axis=1, keepdims=True)
        start = 0
        for part in parts[modality]:
            array = np.load(part, mmap_mode="r") if isinstance(part, (str, Path)) else part
            for first in range(0, len(array), 65536):
                block = np.asarray(array[first:first + 65536], dtype=np.float64)
                block = block / np.linalg.norm(block, axis=1, keepdims=True)
                near = (block @ excluded.T).max(axis=1) >= options.exclude_threshold
                keep[start + first:start + first + len(block)] &= ~near
            start += len(array)
    return keep


def write_unit_vectors(path: Path, parts: Sequence[Any], count: int, keep: np.ndarray) -> int:
    """Stream the kept rows of parts (arrays or .npy paths) into one (count, dim) float32 .npy of unit rows;
    returns dim."""
    with atomic_path(path) as tmp:
        out, start, seen = None, 0, 0
        for part in parts:
            array = np.load(part, mmap_mode="r") if isinstance(part, (str, Path)) else part
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, array.shape[1]))
                reserve_disk(tmp)
            if seen + len(array) > len(keep):
                raise HierarcapsError(f"more vectors than the {len(keep)} items of the memory")
            if array.ndim != 2 or array.shape[1] != out.shape[1]:
                raise HierarcapsError(f"vectors of shape {array.shape} among parts of dimension {out.shape[1]}")
            for first in range(0, len(array), 65536):
                chunk = np.asarray(array[first:first + 65536], dtype=np.float64)
                block = chunk[keep[seen + first:seen + first + len(chunk)]]
                out[start:start + len(block)] = unit_rows(block, seen + first)
                start += len(block)
            seen += len(array)
        if out is None or seen != len(keep):
            raise HierarcapsError(f"{seen} vectors for the {len(keep)} items of the memory")
        out.flush()
        dim = out.shape[1]
        del out
    return dim


def reserve_disk(path: Path) -> None:
    """Allocate a memory-mapped file's blocks before writing through the map: on a full disk the write would
    otherwise kill the process (SIGBUS) and leave the file; this way it ends in one line, the file removed."""
    import errno
    import os

    size = path.stat().st_size
    try:
        with open(path, "r+b") as handle:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise HierarcapsError(f"{path.parent}: no space left for {size} bytes of memory vectors") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):      # a file system that cannot preallocate
            raise


def unit_rows(block: np.ndarray, first_row: int) -> np.ndarray:
    """Rows scaled to unit length; a NaN, infinite or zero row (which would poison every search) is refused."""
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    bad = ~(np.isfinite(block).all(axis=1) & np.isfinite(norms[:, 0]) & (norms[:, 0] > 0))
    if bad.any():
        raise HierarcapsError(f"memory vector row {first_row + int(np.argmax(bad))} is NaN, infinite or zero "
                              f"({int(bad.sum())} such row(s) in this part); drop them before building")
    return block / norms


def write_on_disk_index(folder: Path, modality: str, vectors: np.ndarray, kind: str, blocks: list[tuple[int, int]],
                        options: BuildOptions) -> None:
    """Train on a sample, fill the index blocks (rows [start, end)) on ``engine`` (finished blocks are kept
    across a kill), merge them into ``<modality>.ivfdata`` and write ``<modality>.faiss``."""
    import faiss

    trained_file = folder / "blocks" / f"{modality}-trained.faiss"
    if not trained_file.exists():
        with atomic_path(trained_file) as tmp:
            faiss.write_index(trained_ivf(vectors, kind, train_size=options.train_size), str(tmp))
    tasks = [{"block": n, "start": start, "end": end} for n, (start, end) in enumerate(blocks)
             if not block_file(folder, modality, n).exists()]
    for _ in (options.engine or LocalEngine()).map(IndexBlockWorker(str(folder), modality), tasks,
                                                   desc=f"Index blocks ({modality})", progress=options.progress):
        pass
    with atomic_path(folder / f"{modality}.ivfdata") as data, atomic_path(folder / f"{modality}.faiss") as tmp:
        data.unlink()                                            # faiss creates the data file itself
        merge_on_disk(faiss.read_index(str(trained_file)),
                      [str(block_file(folder, modality, n)) for n in range(len(blocks))], str(tmp), str(data),
                      f"{modality}.ivfdata")


def claim_blocks(blocks: Path, identity: str) -> None:
    """Keep a killed job's finished blocks (index blocks, neighbour blocks) only for the same inputs and settings
    (``identity``); otherwise start the folder afresh."""
    marker = blocks / "IDENTITY"
    if marker.exists() and marker.read_text() == identity:
        return
    shutil.rmtree(blocks, ignore_errors=True)
    blocks.mkdir(parents=True)
    marker.write_text(identity)


def block_file(folder: Path, modality: str, block: int) -> Path:
    return folder / "blocks" / f"{modality}-{block:05d}.faiss"


@dataclasses.dataclass
class IndexBlockWorker:
    """An engine's worker: adds rows [start, end) of a memory's vectors to a copy of the trained index."""

    folder: str
    modality: str
    trained: Any = None                     # read once per worker, not once per block

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        import faiss

        folder = Path(self.folder)
        if self.trained is None:
            self.trained = faiss.read_index(str(folder / "blocks" / f"{self.modality}-trained.faiss"))
        vectors = np.load(folder / f"{self.modality}.npy", mmap_mode="r")
        block = add_block(self.trained, vectors[task["start"]:task["end"]], task["start"])
        with atomic_path(block_file(folder, self.modality, task["block"])) as tmp:
            faiss.write_index(block, str(tmp))
        return {"block": task["block"]}


def shard_folder(shards: str | Path, number: int) -> Path:
    return Path(shards) / f"shard-{number:05d}"


@dataclasses.dataclass
class EmbedWorker:
    """An engine's worker: embeds one shard into ``shards/shard-NNNNN`` (image.npy, text.npy, DONE).

    A task carries its shard's captions and images, so an actor only ever receives its own shards' items.
    The encoder is the one given (local engine), or loaded once per Ray actor from its spec."""

    shards: str
    spec: str | None = None
    encoder: Any = None
    image_batch_size: int = 64
    workers: int = 1

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        if self.encoder is None:
            from ..models.registry import load_encoder

            self.encoder = load_encoder(str(self.spec), lazy=True)
        number = int(task["shard"])
        shard = shard_folder(self.shards, number)
        shutil.rmtree(shard, ignore_errors=True)
        shard.mkdir(parents=True)
        np.save(shard / "text.npy", self.encoder.encode_text(task["captions"]), allow_pickle=False)
        np.save(shard / "image.npy", self.encoder.encode_image(task["images"], batch_size=self.image_batch_size,
                                                               workers=self.workers), allow_pickle=False)
        (shard / "DONE").write_text(str(len(task["captions"])))
        return {"shard": number, "items": len(task["captions"])}


def embed_tasks(items: Sequence[MemoryItem], shard_size: int, shards: Path, *, portable: bool) -> list[dict]:
    """One task per unfinished shard, holding that shard's captions and images. ``portable``: tasks leave this
    process (as JSON), so images must be paths or URLs."""
    tasks = []
    for number in range(-(-len(items) // shard_size)):
        if (shard_folder(shards, number) / "DONE").exists():
            continue
        chunk = items[number * shard_size:(number + 1) * shard_size]
        if portable:
            for item in chunk:
                if not isinstance(item.image, str | None):
                    raise HierarcapsError(f"memory item {item.id!r}: the ray engine sends images to its actors "
                                          f"as paths or URLs, not as {type(item.image).__name__}")
        tasks.append({"shard": number, "captions": [i.caption for i in chunk], "images": [i.image for i in chunk]})
    return tasks


def build_memory(folder: str | Path, items: Sequence[MemoryItem], encoder: Any, options: BuildOptions | None = None,
                 *, shard_size: int = 10_000, image_batch_size: int = 64, workers: int = 1,
                 spec: str | None = None) -> Path:
    """Embed items with a frozen encoder, shard by shard (each shard kept once done), then index them as
    ``options`` say (index blocks of ``shard_size`` rows).

    Killed at any point, a re-run skips the finished shards (and index blocks) and produces the same memory;
    finished shards are kept only for the same encoder, items and shard size, so a build of another source
    into the folder starts afresh. Under the Ray engine each actor loads the encoder from ``spec``.
    """
    if shard_size < 1:
        raise HierarcapsError(f"--shard-size {shard_size}: a shard holds at least one item")
    if not items:
        raise HierarcapsError("the memory would hold no items (the source is empty)")
    options = dataclasses.replace(options or BuildOptions(progress=True), block_size=shard_size)
    engine = options.engine or LocalEngine()
    local = engine.in_process
    if not local and not spec:
        raise HierarcapsError("the ray engine loads the encoder in every actor: give its spec")
    identity = {"name": encoder.name, "fingerprint": encoder.fingerprint()}
    with writing_memory(folder) as folder:
        shards = folder / "shards"
        claim_blocks(shards, f"{identity['fingerprint']} {items_hash(items)} {shard_size}")
        count = -(-len(items) // shard_size)
        worker = EmbedWorker(str(shards), spec, encoder if local else None, image_batch_size, workers)
        tasks = embed_tasks(items, shard_size, shards, portable=not local)
        for _ in engine.map(worker, tasks, desc="Memory shards", progress=options.progress, gpus=1.0):   # GPU actors
            pass                                                                                # where there are GPUs
        parts = [shard_folder(shards, n) for n in range(count)]
        assemble_memory(folder, {m: [p / f"{m}.npy" for p in parts] for m in MODALITIES}, meta_table(items),
                        options, encoder=identity)
        shutil.rmtree(shards, ignore_errors=True)
    return folder


def items_hash(items: Sequence[MemoryItem]) -> str:
    """What a memory's items are: ids, captions and image references (in-memory images by their id)."""
    import hashlib

    digest = hashlib.sha256()
    for item in items:
        image = item.image if isinstance(item.image, str | None) else f"<in memory {item.id}>"
        digest.update(f"{item.id}\t{item.caption}\t{image}\n".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
