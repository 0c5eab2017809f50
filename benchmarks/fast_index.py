"""Which index answers fast at 1M items and beyond: recall@10 and batched queries/s of the package's index types
on the power-law vectors of ``speed_reco.py`` (fresh queries), on this machine's cores, searched as a memory
searches them (vectors memory-mapped from a .npy file; ``ivffs`` candidates re-scored exactly from it).

Rows: ``ivf`` (the default to 1M items until now) at its default and doubled nprobe, and ``ivffs`` (IVF with
4-bit fast-scan codes, dim/4 bytes an item, candidates re-ranked exactly) across nprobe and re-rank factors;
the default settings are marked. Prints one JSON line per setting and writes
``benchmarks/results/fast_index_<items>.json``.

    python benchmarks/fast_index.py --items 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from speed_reco import exact_top10, power_law, recall_at_10


def timed(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Rows found for ``queries`` and queries per second (after a warm-up batch)."""
    search(queries[:64])
    started = time.perf_counter()
    rows = search(queries)
    return rows, len(queries) / (time.perf_counter() - started)


def write_memory_file(path: Path, items: int, dim: int, rng: np.random.Generator, rotation: np.ndarray) -> np.ndarray:
    """``items`` power-law vectors streamed into a .npy file (10M x 512 is 20 GB: never whole in RAM), mapped."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(items, dim))
    for start in range(0, items, CHUNK):
        out[start:start + CHUNK] = power_law(min(CHUNK, items - start), dim, rng, 1.0, rotation)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


CHUNK = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", default="ivffs,ivf", help="index types to build and sweep")
    parser.add_argument("--scratch", default=None, help="folder for the vector file (default: a temporary one)")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()

    import faiss

    from hierarcaps.reco.index import FAST_SCAN_RERANK, build_index, default_nprobe, nlist_for, set_search_effort
    from hierarcaps.reco.memory import reranked_search

    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0].astype(np.float32)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        memory = write_memory_file(Path(scratch) / "image.npy", args.items, args.dim, rng, rotation)
        queries = power_law(args.queries, args.dim, rng, 1.0, rotation)
        truth = exact_top10(memory, queries)
        nlist = nlist_for(args.items)
        default = default_nprobe(nlist)
        rows, builds = [], {}

        def record(kind: str, nprobe: int, factor: int | None, search) -> None:
            found, qps = timed(search, queries)
            row = {"index": kind, "nlist": nlist, "nprobe": nprobe, "rerank_factor": factor,
                   "default": nprobe == default and factor in (None, FAST_SCAN_RERANK),
                   "recall@10": round(recall_at_10(found, truth), 4), "queries_per_s": round(qps, 1),
                   "threads": faiss.omp_get_max_threads()}
            rows.append(row)
            print(json.dumps(row), flush=True)

        for kind in args.types.split(","):
            started = time.perf_counter()
            index = build_index(memory, kind)
            faiss.write_index(index, str(Path(scratch) / f"{kind}.faiss"))
            builds[kind] = {"build_s": round(time.perf_counter() - started, 1),
                            "index_bytes_per_item": (Path(scratch) / f"{kind}.faiss").stat().st_size / args.items}
            for nprobe in (default // 2, default, 2 * default):
                set_search_effort(index, nprobe=nprobe)
                if kind == "ivf":
                    record(kind, nprobe, None, lambda q, index=index: index.search(q, 10)[1])
                    continue
                for factor in (8, FAST_SCAN_RERANK, 32):
                    record(kind, nprobe, factor, lambda q, index=index, factor=factor:
                           reranked_search(index, memory, q, 10, factor)[1])
            del index
    result = {"items": args.items, "dim": args.dim, "queries": args.queries, "builds": builds, "rows": rows,
              "machine": f"CPU, {faiss.omp_get_max_threads()} threads"}
    out = Path(args.results) / f"fast_index_{args.items}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
