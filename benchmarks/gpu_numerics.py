"""How far are GPU embeddings (bf16 autocast) from exact fp32 CPU ones? Needs a CUDA device (``--device cpu``
compares the CPU with itself: a check that the script runs).

Embeds the 1K test set twice with the harness (no cache), on the GPU and on the CPU, and prints the
per-row cosine between the two (images, texts) and every headline metric from each side. The default
model is a random-weight ViT-B/32 (same shape as the real one); its metrics mean little, its cosines do.

    python benchmarks/gpu_numerics.py --image-dir ../shared/hierarcaps/images [--model SPEC | --preset tiny]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

HEADLINE = ("precision", "recall", "d_corr", "order_aware_recall", "i2t_R@1", "t2i_R@1")


def row_cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Cosine of each row of ``a`` with the same row of ``b`` (both unit vectors): min, median, mean."""
    cosines = np.einsum("...d,...d->...", a, b).ravel()
    return {"min": float(cosines.min()), "median": float(np.median(cosines)), "mean": float(cosines.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", required=True)
    parser.add_argument("--model", help="model spec (default: a random-weight CLIP of --preset in a temp folder)")
    parser.add_argument("--preset", default="ViT-B-32", help="the random-weight CLIP's size when --model is not given")
    parser.add_argument("--device", default="cuda", help="the device compared with exact fp32 on the CPU")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    from hierarcaps.data import load_official
    from hierarcaps.harness.evaluation import EvalOptions, embed_benchmark
    from hierarcaps.metrics.scoring import score
    from hierarcaps.models import load_encoder
    from hierarcaps.models.random_models import save_random_hf_clip

    model = args.model or str(save_random_hf_clip(Path(tempfile.mkdtemp()) / "random-clip", args.preset))
    records = load_official("test")
    embedded = {device: embed_benchmark(load_encoder(model, device=device, lazy=True), records,
                                        EvalOptions(image_dir=args.image_dir, cache=False, device=device))
                for device in dict.fromkeys((args.device, "cpu"))}
    gpu, cpu = embedded[args.device].bench, embedded["cpu"].bench
    figures: dict[str, object] = {"model": model, "text_cosine": row_cosines(gpu.text_emb, cpu.text_emb),
                                  "root_cosine": float(gpu.root @ cpu.root)}
    if gpu.image_emb is not None:
        figures["image_cosine"] = row_cosines(gpu.image_emb, cpu.image_emb)
    metrics = {device: score(e.bench) for device, e in embedded.items()}
    figures["metrics"] = {name: {device: metrics[device][name]["value"] for device in metrics}
                          for name in HEADLINE if name in metrics["cpu"]}
    for name, value in figures.items():
        print(f"{name:14s} {json.dumps(value)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
