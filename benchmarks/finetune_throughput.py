"""Training throughput (items/s) of RE fine-tuning: the packaged MiniLM and a random-weight ViT-B/32 text tower.

An item is one training row (4 positive + 4 negative captions, plus the root each step). The loop is timed
without start-up and without the one-off embedding of the frozen starting model's targets.

    python benchmarks/finetune_throughput.py [--steps 40] [--batch-size 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device")
    parser.add_argument("--preset", default="ViT-B-32", help="the random-weight CLIP whose text tower is timed")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import torch

    from hierarcaps.data import offline_train_split, write_csv
    from hierarcaps.finetune.trainer import FinetuneConfig, Trainer
    from hierarcaps.models.random_models import save_random_hf_clip

    work = Path(tempfile.mkdtemp(prefix="hc-ft-speed-"))
    train = write_csv(offline_train_split()[:600], work / "train.csv")
    models = {"all-MiniLM-L6-v2": "minilm",
              f"random {args.preset} (text tower)": str(save_random_hf_clip(work / "random-clip", args.preset))}
    figures = {}
    for label, spec in models.items():
        trainer = Trainer(FinetuneConfig(model=spec, train=str(train), out=str(work / label.split()[0]), lr=1e-5,
                                         batch_size=args.batch_size, steps=args.steps, val_fraction=0.0,
                                         checkpoint_every=args.steps + 1, device=args.device, progress=False))
        trainer.train()
        figures[label] = json.loads((work / label.split()[0] / "log.json").read_text())["throughput"]
        print(f"{label:32s} {figures[label]['items_per_s']:.2f} items/s "
              f"({args.steps} steps of {args.batch_size}, {torch.get_num_threads()} threads, "
              f"device {trainer.encoder.device})")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
