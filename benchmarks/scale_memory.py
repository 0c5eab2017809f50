"""Scale test of an on-disk memory index: N x 512 power-law vectors, IVF-PQ trained on a sample, filled block
by block on an engine (local or Ray actors), merged into one memory-mapped inverted-list file, searched with
exact re-ranking from the memory-mapped vectors.

One modality is built (a memory holds two: twice the disk and build time; RAM peaks per modality, as they are
built one after the other). It uses the package's own pieces (``write_unit_vectors``, ``write_on_disk_index``,
``reranked_search``), so what is measured is what ``hierarcaps reco memory --on-disk`` does after embedding.

    python benchmarks/scale_memory.py --items 10000000 --engine ray
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from speed_reco import exact_top10, power_law, recall_at_10


def used_bytes() -> int:
    """System memory in use (total - available: page cache does not count)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])) * 1024


class PeakMemory(threading.Thread):
    """Samples system memory in use every 0.2 s (covers the driver and every actor)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.baseline = self.peak = used_bytes()
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, used_bytes())
            time.sleep(0.2)


def rotation_for(dim: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))[0].astype(np.float32)


def blocks(items: int, dim: int, block: int, alpha: float, seed: int) -> Iterator[np.ndarray]:
    """The synthetic collection, block by block (never all in RAM), the same for every run with one seed."""
    rotation = rotation_for(dim, seed)
    for number, start in enumerate(range(0, items, block)):
        yield power_law(min(block, items - start), dim, np.random.default_rng([seed, number]), alpha, rotation)


def main() -> None:
    import faiss
    from tqdm.auto import tqdm

    from hierarcaps.engines import make_engine
    from hierarcaps.reco.index import RERANK_FACTOR, default_nprobe, faiss_quantizer, nlist_for, set_search_effort
    from hierarcaps.reco.memory import reranked_search
    from hierarcaps.reco.memory_build import BuildOptions, write_on_disk_index, write_unit_vectors

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block", type=int, default=500_000, help="rows per index block (one engine task)")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--engine", choices=["local", "ray"], default="ray")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--truth-queries", type=int, default=200, help="queries whose exact top 10 is computed")
    parser.add_argument("--out", default="runs/scale-memory")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-vectors", action="store_true", help="keep an earlier run's vectors (same seed)")
    args = parser.parse_args()

    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    memory = PeakMemory()
    memory.start()
    timings: dict[str, float] = {}
    begun = time.perf_counter()
    existing = folder / "image.npy"
    if args.reuse_vectors and existing.exists() and np.load(existing, mmap_mode="r").shape == (args.items, args.dim):
        timings["vectors_s"] = float("nan")                                  # written by an earlier run
    else:
        parts = tqdm(blocks(args.items, args.dim, args.block, args.alpha, args.seed),
                     total=-(-args.items // args.block), desc="Vectors", unit="block")
        write_unit_vectors(existing, parts, args.items, np.ones(args.items, dtype=bool))      # every row kept
        timings["vectors_s"] = time.perf_counter() - begun
    shutil.rmtree(folder / "blocks", ignore_errors=True)                     # a fresh index every run
    vectors = np.load(existing, mmap_mode="r")
    spans = [(s, min(args.items, s + args.block)) for s in range(0, args.items, args.block)]
    engine = make_engine(args.engine)
    begun = time.perf_counter()
    write_on_disk_index(folder, "image", vectors, "ivfpq", spans, BuildOptions(engine=engine, progress=True))
    finished = time.time()
    trained = (folder / "blocks" / "image-trained.faiss").stat().st_mtime
    filled = max(p.stat().st_mtime for p in (folder / "blocks").glob("image-0*.faiss"))
    index_s = time.perf_counter() - begun
    timings |= {"train_s": index_s - (finished - trained), "fill_s": filled - trained, "merge_s": finished - filled,
                "index_s": index_s}
    memory.running = False
    files = {name: (folder / name).stat().st_size for name in ("image.npy", "image.faiss", "image.ivfdata")}

    index = faiss.read_index(str(folder / "image.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    # fresh points of the same distribution (another seed, the same rotation)
    queries = power_law(args.queries, args.dim, np.random.default_rng([args.seed, -1 % 2**32]), args.alpha,
                        rotation_for(args.dim, args.seed))
    begun = time.perf_counter()
    truth = exact_top10(vectors, queries[:args.truth_queries])
    timings["exact_search_s"] = time.perf_counter() - begun
    nlist = nlist_for(args.items)
    sweep = []
    for nprobe in sorted({128, default_nprobe(nlist), 2 * default_nprobe(nlist)}):
        set_search_effort(index, nprobe=nprobe)          # a graph quantizer searches deeper with it
        for factor in (4, RERANK_FACTOR):
            begun = time.perf_counter()
            _, rows = reranked_search(index, vectors, queries, 10, factor)
            seconds = time.perf_counter() - begun
            sweep.append({"nprobe": nprobe, "rerank_factor": factor,
                          "default": nprobe == default_nprobe(nlist) and factor == RERANK_FACTOR,
                          "recall_at_10": recall_at_10(rows[:args.truth_queries], truth),
                          "queries_per_s": len(queries) / seconds})
            print(json.dumps(sweep[-1]), flush=True)
    result = {
        "items": args.items, "dim": args.dim, "index": "ivfpq (on disk, 64-byte codes, exact re-rank from the vectors)",
        "nlist": nlist, "quantizer": type(faiss_quantizer(index)).__name__, "block": args.block,
        "engine": args.engine, "timings": timings,
        "bytes_per_item": {"vectors": files["image.npy"] / args.items,
                           "index": (files["image.faiss"] + files["image.ivfdata"]) / args.items},
        "files": files, "peak_ram_gb": (memory.peak - memory.baseline) / 2**30, "search": sweep,
        "machine": "CPU, 2 cores, 24 GB RAM",
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.items // 1_000_000}m" if args.items >= 1_000_000 else f"{args.items // 1000}k"
    (out / f"scale_memory_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
