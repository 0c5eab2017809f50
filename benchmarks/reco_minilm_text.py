"""A text-only RECO variant with the packaged MiniLM, scored on HierarCaps before and after.

Memory: the offline training split (expanded rows of non-test images); each row pairs its most specific
caption (standing in for the image) with its tier-2 caption (the text side), both embedded by MiniLM.
Fusion modules are trained on the memory's own pairs (each item excluded from its own neighbours); the
evaluation refines every HierarCaps text with the text-side module (retrieve similar tier-2 texts, fuse
their paired captions) and scores it with the harness: d_corr and the text-query metrics, with CIs.

    python benchmarks/reco_minilm_text.py [--steps 600] [--out runs/reco-minilm]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = ("d_corr", "text_query/precision", "text_query/recall", "text_query/order_aware_recall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--out", default="runs/reco-minilm")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()

    from hierarcaps.benchmarks.harness import EvalOptions, evaluate
    from hierarcaps.data import offline_train_split
    from hierarcaps.models import load_encoder
    from hierarcaps.reco.memory import Memory, MemoryItem, write_memory
    from hierarcaps.reco.train import RecoConfig, RecoTrainer

    out = Path(args.out)
    rows = offline_train_split()
    encoder = load_encoder("minilm", lazy=True)
    if not (out / "memory" / "manifest.json").exists():
        captions = encoder.encode_text([r.positive[-1] for r in rows], progress=True)
        generic = encoder.encode_text([r.positive[1] for r in rows], progress=True)
        items = [MemoryItem(f"train:{r.id}", r.positive[-1], None, "offline-train") for r in rows]
        write_memory(out / "memory", captions, generic, items, index="flat",
                     encoder={"name": encoder.name, "fingerprint": encoder.fingerprint()})
    memory = Memory(out / "memory")
    config = RecoConfig(memory=str(out / "memory"), out=str(out / "model"), base="minilm", k=args.k, heads=6,
                        steps=args.steps, batch_size=256, lr=1e-4, val_every=100)
    RecoTrainer(config, memory.vectors["image"], memory.vectors["text"], memory.ids).train()

    options = EvalOptions(progress=False)
    before, after = evaluate("minilm", options), evaluate(f"reco:{out / 'model'}#text", options)

    def fmt(entry: dict) -> str:
        return f"{entry['value']:.4f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"

    lines = ["# Text-only RECO with all-MiniLM-L6-v2 on HierarCaps", "",
             f"Command: `python benchmarks/reco_minilm_text.py --steps {args.steps} --k {args.k}`; memory of "
             f"{len(memory)} offline-split rows (caption <-> tier-2 text), transformer fusion, 1K test set.", "",
             "| metric | MiniLM | MiniLM + RECO (text side) |", "|---|---|---|",
             *(f"| {m} | {fmt(before['metrics'][m])} | {fmt(after['metrics'][m])} |" for m in ROWS)]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "reco_minilm_text.md").write_text("\n".join(lines) + "\n")
    (results / "reco_minilm_text.json").write_text(json.dumps({"before": before["metrics"],
                                                               "after": after["metrics"]}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
