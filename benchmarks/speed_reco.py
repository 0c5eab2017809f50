"""RECO speed on this machine: kNN over a 1M x 512 memory per index type, and RECO's inference overhead.

Data like real embeddings rather than well-separated clusters: Gaussian vectors whose covariance spectrum
falls as a power law (variance of component i proportional to i^-alpha), randomly rotated and normalised,
and fresh queries drawn from the same distribution (not memory points plus noise). For each index type:
build time, bytes per item, and a sweep of its search knob (recall@10 against exact search, batched queries
per second), with the cheapest setting reaching recall@10 >= 0.95 and the recall of the package's default
index settings. Then the overhead of RECO over the plain encoder for a random-weight ViT-B/32 at batch 256
(image forward vs forward + search + fusion).

    python benchmarks/speed_reco.py [--items 1000000] [--types flat,ivf,ivfpq,hnsw] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

KNOBS = {"flat": [None], "ivf": [4, 8, 16, 32, 64, 128, 256],
         "ivfpq": [(8, 8), (16, 16), (32, 32), (64, 64), (128, 128), (256, 256)],   # (nprobe, k_factor)
         "hnsw": [16, 32, 64, 128, 256, 512]}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def power_law(n: int, dim: int, rng: np.random.Generator, alpha: float, rotation: np.ndarray) -> np.ndarray:
    """Unit vectors with an anisotropic, power-law spectrum (as real embeddings have), in a fixed rotation."""
    scale = (np.arange(1, dim + 1, dtype=np.float64) ** (-alpha / 2)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        out[start:stop] = unit((rng.standard_normal((stop - start, dim)).astype(np.float32) * scale) @ rotation)
    return out


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


EXACT_CHUNK = 1_000_000


def exact_top10(memory: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Rows of the 10 best inner products per query, exactly; the memory (which may be memory-mapped) is
    read a chunk at a time."""
    import faiss

    scores, rows = [], []
    for start in range(0, len(memory), EXACT_CHUNK):
        found_scores, found_rows = faiss.knn(queries, np.ascontiguousarray(memory[start:start + EXACT_CHUNK]), 10,
                                             metric=faiss.METRIC_INNER_PRODUCT)
        scores.append(found_scores)
        rows.append(found_rows + start)
    scores, rows = np.hstack(scores), np.hstack(rows)
    return np.take_along_axis(rows, np.argsort(-scores, axis=1, kind="stable")[:, :10], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", default="flat,ivf,ivfpq,hnsw")
    parser.add_argument("--alpha", type=float, default=1.0, help="power-law exponent of the spectrum")
    parser.add_argument("--batch", type=int, default=256, help="images per batch for the overhead measurement")
    parser.add_argument("--preset", default="ViT-B-32", help="the random-weight CLIP of the overhead measurement "
                        "(its embedding size must be --dim)")
    parser.add_argument("--json")
    args = parser.parse_args()

    import faiss
    import torch

    from hierarcaps.reco.fusion import FusionConfig, build_fusion
    from hierarcaps.reco.index import build_index, default_index_type, set_search_effort

    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))[0].astype(np.float32)
    memory = power_law(args.items, args.dim, rng, args.alpha, rotation)
    queries = power_law(args.queries, args.dim, rng, args.alpha, rotation)     # fresh: not memory points
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(memory)
    _, truth = exact.search(queries, 10)
    figures: dict[str, object] = {"items": args.items, "dim": args.dim, "alpha": args.alpha,
                                  "threads": faiss.omp_get_max_threads(),
                                  "default_index": default_index_type(args.items)}
    chosen_index = None
    for kind in args.types.split(","):
        start = time.perf_counter()
        index = build_index(memory, kind)
        build_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            faiss.write_index(index, os.path.join(tmp, "i"))
            size = os.path.getsize(os.path.join(tmp, "i"))
        row: dict[str, object] = {"build_s": build_s, "bytes_per_item": size / args.items}
        _, found = index.search(queries, 10)                     # the package's default search settings
        row["default_recall@10"] = recall_at_10(found, truth)
        sweep = []
        for knob in KNOBS[kind]:
            if kind == "hnsw":
                set_search_effort(index, ef_search=knob)
            elif kind == "ivfpq":
                set_search_effort(index, nprobe=knob[0], k_factor=knob[1])
            elif knob is not None:
                set_search_effort(index, nprobe=knob)
            start = time.perf_counter()
            _, found = index.search(queries, 10)
            seconds = time.perf_counter() - start
            sweep.append({"knob": knob, "recall@10": recall_at_10(found, truth),
                          "queries_per_s": args.queries / seconds})
            print(f"  {kind} knob {knob}: recall@10 {sweep[-1]['recall@10']:.3f}, "
                  f"{sweep[-1]['queries_per_s']:.0f} q/s", flush=True)
        row["sweep"] = sweep
        row.update(next((r for r in sweep if r["recall@10"] >= 0.95), sweep[-1]))
        figures[kind] = row
        print(f"{kind:6s} build {row['build_s']:7.1f} s  {row['bytes_per_item']:7.1f} B/item  default recall@10 "
              f"{row['default_recall@10']:.3f}; cheapest >= 0.95: knob {row['knob']}  recall@10 {row['recall@10']:.3f}"
              f"  {row['queries_per_s']:9.0f} q/s", flush=True)
        if kind == "ivf":
            chosen_index = index
    chosen_index = chosen_index or exact

    from hierarcaps.models.random_models import PRESETS, save_random_hf_clip
    from hierarcaps.models.registry import load_encoder

    preset = PRESETS[args.preset]
    if preset["projection_dim"] != args.dim:
        parser.error(f"--preset {args.preset} embeds in {preset['projection_dim']} dimensions: give that --dim")
    model = load_encoder(str(save_random_hf_clip(Path(tempfile.mkdtemp()) / "vit", args.preset)))
    side = preset["vision"]["image_size"]
    pixels = torch.randn(args.batch, 3, side, side)
    fusion = build_fusion(FusionConfig(dim=args.dim)).eval()
    with torch.inference_mode():
        model.image_features(pixels[:8])                            # warm-up
        start = time.perf_counter()
        features = torch.nn.functional.normalize(model.image_features(pixels), dim=-1)
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        _, rows = chosen_index.search(features.numpy(), 16)
        neighbours = torch.from_numpy(memory[rows.clip(0)])
        search_s = time.perf_counter() - start
        start = time.perf_counter()
        fusion(features, neighbours)
        fusion_s = time.perf_counter() - start
    figures["overhead"] = {"batch": args.batch, "forward_s": forward_s, "search_s": search_s, "fusion_s": fusion_s,
                           "overhead_percent": 100 * (search_s + fusion_s) / forward_s,
                           "index": "ivf" if chosen_index is not exact else "flat"}
    print(f"RECO overhead at batch {args.batch}: forward {forward_s:.2f} s, search {search_s:.3f} s, "
          f"fusion {fusion_s:.3f} s -> +{figures['overhead']['overhead_percent']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
