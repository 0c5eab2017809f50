"""How fast is `hierarcaps evaluate` against the compute floor? (random-weight ViT-B/32, same cost as the real one)

Prints: the floor (the model's own batched fp32 forward passes over the distinct inputs), the whole
`hierarcaps evaluate` run from a cold embedding cache (each measured right after a floor, ``--repeats`` times,
medians reported), a cached re-run, metric time from cached embeddings,
img/s, text/s and peak memory. With --upstream it also times the per-item loop (one image and one row of 4
captions per forward pass) that the reference implementation uses.

    python benchmarks/speed_evaluate.py --image-dir ../shared/hierarcaps/images [--repeats 3] [--upstream]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_cli(args: list[str], env: dict[str, str]) -> float:
    """Wall time of one `hierarcaps` command in a fresh process (its peak memory is in its result file)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hierarcaps", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def load_clip(model_dir: Path, device: str):
    """The random CLIP through transformers' own classes, as a plain script would load it."""
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(model_dir).eval().to(device), CLIPProcessor.from_pretrained(model_dir)


def floor(model_dir: Path, image_paths: list[Path], texts: list[str], batch: int, text_batch: int,
          device: str) -> dict[str, float]:
    """The model's own batched forward passes (pixels and tokens already on the device), preprocessing timed apart."""
    import torch

    from hierarcaps.data.images import open_image
    from hierarcaps.models.torch_utils import autocast, length_sorted_batches

    model, processor = load_clip(model_dir, device)
    pixels, preprocess_s = timed(lambda: torch.stack([
        processor.image_processor(images=open_image(p), return_tensors="pt")["pixel_values"][0] for p in image_paths]))
    pixels = pixels.to(device)
    tokens = [processor.tokenizer([texts[i] for i in b], padding=True, truncation=True, return_tensors="pt").to(device)
              for b in length_sorted_batches(texts, text_batch)]

    def forward_all(forward, inputs) -> None:
        with torch.inference_mode(), autocast(device):
            for item in inputs:
                forward(item)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    image_batches = [pixels[i:i + batch] for i in range(0, len(pixels), batch)]
    if device.startswith("cuda"):      # kernels and cuBLAS handles are made on first use: keep that out of the floor
        forward_all(lambda p: model.get_image_features(pixel_values=p), image_batches[:2])
        forward_all(lambda t: model.get_text_features(**t), tokens[:2])
    _, image_s = timed(lambda: forward_all(lambda p: model.get_image_features(pixel_values=p), image_batches))
    _, text_s = timed(lambda: forward_all(lambda t: model.get_text_features(**t), tokens))
    return {"preprocess_images_s": preprocess_s, "forward_images_s": image_s, "forward_texts_s": text_s,
            "floor_s": image_s + text_s}


def warm_throughput(model_dir: Path, image_paths: list[Path], texts: list[str], batch: int, text_batch: int,
                    workers: int, device: str, copies: int) -> dict[str, float]:
    """The harness's own embedding path in a process where the model is loaded and warm (no start-up costs):
    decoding workers, transfer and forward, over the images once and ``copies`` times (steady state)."""
    from hierarcaps.models import load_encoder

    encoder = load_encoder(str(model_dir), device=device)
    encoder.encode_image(image_paths[:batch], batch_size=batch, workers=workers)
    encoder.encode_text(texts[:text_batch], batch_size=text_batch)
    _, once_s = timed(lambda: encoder.encode_image(image_paths, batch_size=batch, workers=workers))
    _, many_s = timed(lambda: encoder.encode_image(image_paths * copies, batch_size=batch, workers=workers))
    _, text_s = timed(lambda: encoder.encode_text(texts, batch_size=text_batch))
    return {"warm_images_per_s": len(image_paths) / once_s,
            f"warm_images_per_s_x{copies}": len(image_paths) * copies / many_s,
            "warm_texts_per_s": len(texts) / text_s}


def upstream_loop(model_dir: Path, records, image_dir: Path, device: str) -> float:
    """The reference implementation's shape: per image one forward, per row one forward of its 4 texts."""
    import torch
    from PIL import Image

    from hierarcaps.models.hf_clip import features
    from hierarcaps.models.torch_utils import autocast

    model, processor = load_clip(model_dir, device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device):
        for r in records:
            pixels = processor(images=Image.open(image_dir / r.image_file), return_tensors="pt").to(device)
            features(model.get_image_features(**pixels)).cpu()
        for r in records:
            tokens = processor(text=list(r.positive), padding=True, truncation=True, return_tensors="pt").to(device)
            features(model.get_text_features(**tokens)).cpu()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--text-batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, help="image decoding processes (default: the harness's)")
    parser.add_argument("--repeats", type=int, default=1, help="floor + cold run pairs; medians are reported")
    parser.add_argument("--plain-allocator", action="store_true",
                        help="measure the floor (and --upstream) with glibc's default allocator settings")
    parser.add_argument("--upstream", action="store_true", help="also time the per-item loop (about 4 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU runs use the harness's bf16 autocast)")
    parser.add_argument("--preset", default="ViT-B-32", help="the random-weight CLIP timed")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    from hierarcaps.data import load_official
    from hierarcaps.models.random_models import save_random_hf_clip
    from hierarcaps.models.torch_utils import keep_freed_memory

    if not args.plain_allocator:
        keep_freed_memory()      # the floor's forward passes get the same allocator setting as `hierarcaps evaluate`

    records = load_official("test")
    image_dir = Path(args.image_dir)
    texts = sorted({t for r in records for t in r.positive} | {""})
    work = Path(tempfile.mkdtemp(prefix="hc-speed-"))
    model_dir = save_random_hf_clip(work / "random-clip", args.preset)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    figures: dict[str, float] = {"distinct_texts": len(texts), "images": len(records)}

    def evaluate_args(out: Path) -> list[str]:
        return ["evaluate", "--model", str(model_dir), "--image-dir", str(image_dir), "--out", str(out),
                "--batch-size", str(args.batch_size), "--text-batch-size", str(args.text_batch_size), "--quiet",
                "--device", args.device,
                *(["--workers", str(args.workers)] if args.workers is not None else [])]

    def harness_timings(out: Path) -> dict[str, float]:
        return json.loads(next(out.rglob("*.json")).read_text())["timings"]

    pairs, cold_timings = [], []
    for repeat in range(args.repeats):    # floor and cold run side by side: this CPU's speed drifts over minutes
        floor_figures = floor(model_dir, [image_dir / r.image_file for r in records], texts,
                              args.batch_size, args.text_batch_size, args.device)
        out = work / f"results-{repeat}"
        cold_s = run_cli(evaluate_args(out), {**env, "HIERARCAPS_CACHE": str(work / f"cache-{repeat}")})
        cold_timings.append(harness_timings(out))
        pairs.append({**floor_figures, "evaluate_cold_s": cold_s,
                      "evaluate_cold_peak_mb": cold_timings[-1]["peak_memory_mb"],
                      "ratio_to_floor": cold_s / floor_figures["floor_s"]})
        floor_s, harness = floor_figures["floor_s"], cold_timings[-1]
        print(f"repeat {repeat + 1}: floor {floor_s:.1f} s (images {floor_figures['forward_images_s']:.1f} + texts "
              f"{floor_figures['forward_texts_s']:.1f}), cold evaluate {cold_s:.1f} s (images "
              f"{harness['embed_images_s']:.1f}, texts {harness['embed_texts_s']:.1f}), ratio {cold_s / floor_s:.3f}",
              flush=True)
    figures.update({name: float(np.median([pair[name] for pair in pairs])) for name in pairs[0]})
    figures["ratios"] = [round(pair["ratio_to_floor"], 4) for pair in pairs]
    env["HIERARCAPS_CACHE"] = str(work / "cache-0")
    figures["evaluate_cached_s"] = run_cli(evaluate_args(work / "results-0"), env)
    cached_timings = harness_timings(work / "results-0")
    figures["images_per_s_floor"] = len(records) / figures["forward_images_s"]
    figures["images_per_s_evaluate"] = float(np.median([t["images_per_s"] for t in cold_timings]))
    figures["texts_per_s_evaluate"] = float(np.median([t["texts_per_s"] for t in cold_timings]))

    from hierarcaps.harness.evaluation import EvalOptions, embed_benchmark
    from hierarcaps.metrics.bootstrap import summarise_all
    from hierarcaps.metrics.scoring import per_unit_metrics
    from hierarcaps.models import load_encoder

    os.environ["HIERARCAPS_CACHE"] = env["HIERARCAPS_CACHE"]
    embedded = embed_benchmark(load_encoder(str(model_dir), device=args.device, lazy=True), records,
                               EvalOptions(image_dir=str(image_dir), progress=False))
    metric_times = []
    for _ in range(3):
        _, seconds = timed(lambda: summarise_all(per_unit_metrics(embedded.bench)[0]))
        metric_times.append(seconds)
    figures["metrics_from_cache_s"] = min(metric_times)
    figures["harness_timings_cold"] = cold_timings
    figures["harness_timings_cached"] = cached_timings
    if args.device != "cpu":      # on CPU the floor already is the warm figure
        from hierarcaps.harness.evaluation import default_workers

        figures.update(warm_throughput(model_dir, [image_dir / r.image_file for r in records], texts, args.batch_size,
                                       args.text_batch_size, args.workers or default_workers(), args.device, 5))
    if args.upstream:
        figures["upstream_loop_s"] = upstream_loop(model_dir, records, image_dir, args.device)
        figures["speedup_vs_upstream"] = figures["upstream_loop_s"] / figures["evaluate_cold_s"]

    import torch

    figures["threads"] = torch.get_num_threads()
    for name, value in figures.items():
        shown = json.dumps(value) if isinstance(value, dict) else f"{value:.3f}" if isinstance(value, float) else value
        print(f"{name:28s} {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
