"""Distillation that learns: a small T5 from scratch (own BPE tokenizer) on the offline training split's
real hierarchies, both directions, then tier 1 of held-out images (every 10th image, never trained on)
predicted from their captions, against always answering the most frequent tier 1.
Writes benchmarks/results/distill_student.{json,md}.

    python benchmarks/distill_student.py --steps 1500
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

SCRATCH = {"d_model": 128, "d_ff": 256, "d_kv": 32, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
           "dropout_rate": 0.0}


def split_by_image(records: list, every: int = 10) -> tuple[list, list]:
    """Training chains and held-out records; an image is wholly on one side."""
    images = sorted({r.image_url for r in records})
    held = set(images[::every])
    return [r.positive for r in records if r.image_url not in held], [r for r in records if r.image_url in held]


def main() -> None:
    from hierarcaps.data.splits import offline_train_split
    from hierarcaps.generation.config import BuildConfig, DistillConfig
    from hierarcaps.generation.distill import Distiller, Student, tier1_scores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--held-out", type=int, default=400, help="held-out captions scored (a seeded sample)")
    parser.add_argument("--out", default="runs/bench-distill")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    train, held_out = split_by_image(offline_train_split())
    held_out = random.Random(0).sample(held_out, min(args.held_out, len(held_out)))
    config = DistillConfig(scratch=SCRATCH, tokenizer_vocab=2000, steps=args.steps, batch_size=64, lr=1e-3,
                           warmup_steps=150, eval_every=max(1, args.steps // 6), checkpoint_every=500,
                           val_fraction=0.02)
    started = time.perf_counter()
    folder = Distiller(config, train, Path(args.out), seed=0).run()
    seconds = time.perf_counter() - started
    summary = json.loads((folder.parent / "summary.json").read_text())
    scores = tier1_scores(Student(folder, BuildConfig(batch_size=64)), train, held_out)
    result = {"train_chains": len(train), "steps": args.steps, "train_seconds": seconds,
              "val_loss_first": summary["val_loss_first"], "val_loss_last": summary["val_loss_last"],
              "tier1": scores, "config": {**config.__dict__}}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_student.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (f"# Distillation from scratch ({args.steps} steps, {seconds:.0f} s on this CPU)\n\n"
             f"Held-out loss {result['val_loss_first']:.3f} -> {result['val_loss_last']:.3f}.\n\n"
             "| tier 1 of held-out captions | student | most frequent tier 1 |\n|---|---|---|\n"
             f"| exact match | {scores['exact']:.3f} | {scores['baseline_exact']:.3f} |\n"
             f"| any tier 1 of the image | {scores['any_of_image']:.3f} | {scores['baseline_any_of_image']:.3f} |\n")
    (out / "distill_student.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
