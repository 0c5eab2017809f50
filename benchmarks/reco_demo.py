"""RECO on a task nobody designed around it: which generic label did the HierarCaps pipeline give a caption?

The offline training split's tier-1 strings are the generation pipeline's own choices ("breed", "board",
"transportation vehicle", "something", ...): a frozen text encoder cannot guess them from the caption
alone, but a memory of other captions with their labels holds the answer. Each caption (the query side,
standing in for an image) is paired with its tier-1 label (the text side).

Protocol (groups are images; no image is in two roles):
- held-out images (15%) give the queries, restricted to captions whose label is one of the most frequent
  ``--classes`` labels; their label is predicted as the nearest class-name embedding;
- the other images form the memory; fusion modules train on the pairs of half of them, with that half as
  their memory (each pair's own image excluded), and are scored with all of it (memory swap);
- frozen: the query as is; mean: mean of the query and its neighbours' labels; mlp: the equal-size control;
  transformer: RECO's fusion. Accuracy with a 95% bootstrap CI over queries.

    python benchmarks/reco_demo.py [--model minilm] [--k 16] [--steps 1500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

KINDS = ("frozen", "mean", "mlp", "transformer")


def split_images(images: list[str], seed: int) -> tuple[set[str], set[str], set[str]]:
    """(held-out, memory used in training, rest of the memory) by a seeded hash of the image name."""
    ranked = sorted(set(images), key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    held = set(ranked[:round(0.15 * len(ranked))])
    memory = ranked[len(held):]
    return held, set(memory[:len(memory) // 2]), set(memory[len(memory) // 2:])


def accuracy_ci(correct: np.ndarray) -> dict:
    from hierarcaps.metrics.bootstrap import summarise_all

    return summarise_all({"accuracy": correct.astype(np.float64)[:, None]})["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="any text encoder spec (a CLIP's text tower works too)")
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device")
    parser.add_argument("--out", default="runs/reco-demo")
    parser.add_argument("--results", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix of the result files (ablations)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which of frozen, mean, mlp, transformer to run")
    parser.add_argument("--temperature", type=float, default=0.07, help="initial contrastive temperature")
    parser.add_argument("--no-residual", action="store_true")
    args = parser.parse_args()

    from hierarcaps.data import offline_train_split
    from hierarcaps.models import load_encoder
    from hierarcaps.reco.encoder import refine
    from hierarcaps.reco.memory import Memory, MemoryItem, write_memory
    from hierarcaps.reco.train import RecoConfig, RecoTrainer

    started = time.perf_counter()
    out = Path(args.out)
    rows = offline_train_split()
    encoder = load_encoder(args.model, device=args.device, lazy=True)
    held, train_part, rest = split_images([r.image_file for r in rows], args.seed)
    captions = encoder.encode_text([r.positive[-1] for r in rows], progress=True)
    label_names = sorted({r.positive[0] for r in rows})
    label_vectors = encoder.encode_text(label_names)
    label_of = {name: i for i, name in enumerate(label_names)}
    labels = label_vectors[[label_of[r.positive[0]] for r in rows]]
    groups = [r.image_file for r in rows]

    def memory(name: str, images: set[str]) -> Memory:
        keep = [i for i, r in enumerate(rows) if r.image_file in images]
        items = [MemoryItem(f"row{i}", rows[i].positive[-1], None, "offline-split", group=groups[i]) for i in keep]
        return Memory(write_memory(out / name, captions[keep], labels[keep], items, index="flat",
                                   encoder={"name": encoder.name, "fingerprint": encoder.fingerprint()}))

    memory("memory-train", train_part)
    full_memory = memory("memory-all", train_part | rest)
    train_rows = [i for i, r in enumerate(rows) if r.image_file in train_part]
    classes = [name for name, _ in Counter(rows[i].positive[0] for i in range(len(rows))
                                           if rows[i].image_file not in held).most_common(args.classes)]
    class_index = {name: c for c, name in enumerate(classes)}
    queries = [i for i, r in enumerate(rows) if r.image_file in held and r.positive[0] in class_index]
    truth = np.array([class_index[rows[i].positive[0]] for i in queries])
    class_vectors = label_vectors[[label_of[name] for name in classes]]

    results, modules = {}, {}
    kinds = [kind for kind in KINDS if kind in args.kinds.split(",")]
    for kind in kinds:
        if kind == "frozen":
            refined = captions[queries]
        else:
            config = RecoConfig(memory=str(out / "memory-train"), out=str(out / kind), base=args.model, k=args.k,
                                fusion=kind, heads=args.heads, sides="image", steps=0 if kind == "mean" else args.steps,
                                lr=args.lr, batch_size=args.batch_size, seed=args.seed, val_every=250,
                                temperature=args.temperature, residual=not args.no_residual,
                                duplicate_threshold=1.01)
            trainer = RecoTrainer(config, captions[train_rows], labels[train_rows], [groups[i] for i in train_rows])
            trainer.train()
            modules[kind] = trainer
            refined = refine(dict(trainer.modules), full_memory, captions[queries], "image", args.k,
                             duplicate_threshold=1.01)
        correct = np.argmax(refined @ class_vectors.T, axis=1) == truth
        results[kind] = accuracy_ci(correct)
        print(kind, json.dumps(results[kind]), flush=True)

    def fmt(entry: dict) -> str:
        return f"{entry['value']:.4f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"

    lines = [
        "# RECO on real text: the generation pipeline's tier-1 label of a caption", "",
        f"Command: `python benchmarks/reco_demo.py --model {args.model} --k {args.k} --heads {args.heads} "
        f"--steps {args.steps} --lr {args.lr:g} --temperature {args.temperature:g}"
        f"{' --no-residual' if args.no_residual else ''} --kinds {','.join(kinds)}`", "",
        f"{len(queries):,} queries (tier-4 captions of {len(held):,} held-out images, label among the "
        f"{args.classes} most frequent tier-1 strings); memory of {len(full_memory):,} captions "
        f"({len(train_part | rest):,} images), fusion trained on the {len(train_rows):,} pairs of "
        f"{len(train_part):,} of them with those alone as memory. Chance: {1 / args.classes:.3f}; majority "
        f"class: {np.bincount(truth).max() / len(truth):.3f}.", "",
        "| fusion | accuracy [95% CI] |", "|---|---|",
        *(f"| {kind} | {fmt(results[kind])} |" for kind in kinds), "",
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min (CPU, 2 cores).",
    ]
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    (results_dir / f"reco_demo{suffix}.md").write_text("\n".join(lines) + "\n")
    (results_dir / f"reco_demo{suffix}.json").write_text(json.dumps(
        {"args": vars(args), "queries": len(queries), "memory_items": len(full_memory),
         "train_pairs": len(train_rows), "accuracy": results,
         "logs": {kind: trainer.log for kind, trainer in modules.items()}}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
