"""RECO on a task nobody designed around it: which generic label did the HierarCaps pipeline give a caption?

The offline training split's tier-1 strings are the generation pipeline's own choices ("breed", "board",
"transportation vehicle", "something", ...): a frozen text encoder cannot guess them from the caption
alone, but a memory of other captions with their labels holds the answer. Each caption stands in for an image
(the query side) and its tier-1 label is its text; classes are scored as zero-shot classification is: the
refined query against every refined class name, both sides refined as RECO refines them for classification
(a caption through the labels of its nearest memory captions, a class name through the captions of its
nearest memory labels).

Protocol (groups are images; no image is in two roles):
- 15% of images are held out; their captions whose label is one of ``--classes`` scored classes are the
  queries. The memory holds every other image's (caption, label) pairs, nothing of the held-out images.
- ``seen``: the scored classes are the most frequent labels, and training pairs are all memory pairs (seen-class
  classification); validation holds out whole images. ``zeroshot`` (the paper's setting): the same scored
  classes, but no training pair and no item of the training memory carries one of them or a near-duplicate
  (``hierarcaps.reco.labels``: the same singular key, or cosine >= 0.85; the count is reported); validation
  holds out whole classes (concepts), half to select the step and half, untouched, to decide auto; the fusion
  is scored with the full memory, as RECO swaps in a larger one.
- Fusions: frozen (the query as is), mean (parameter-free), and learned ones selected on held-out data; each
  learned run reports its kept step and the mean fusion score on the same validation split.
- Control: the neighbours of each query are swapped with another query's; a fusion that reads its memory
  falls, one that does not stays.
Accuracy with a 95% bootstrap CI over queries; differences to mean fusion with a paired bootstrap CI.

    python benchmarks/reco_demo.py [--settings seen,zeroshot] [--objectives vocabulary,in-batch] [--steps 1500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

RUNS = ("mean", "transformer", "mlp")


def split_images(images: list[str], seed: int) -> tuple[set[str], set[str]]:
    """(held-out images, memory images) by a seeded hash of the image name."""
    ranked = sorted(set(images), key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    held = set(ranked[:round(0.15 * len(ranked))])
    return held, set(ranked[len(held):])


def paired_ci(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean of a - b over queries with a seeded 95% bootstrap CI (the same resamples for both)."""
    from hierarcaps.metrics.bootstrap import summarise_all

    return summarise_all({"d": (a.astype(np.float64) - b)[:, None]}, resamples=resamples, seed=seed)["d"]


def accuracy_ci(correct: np.ndarray) -> dict:
    from hierarcaps.metrics.bootstrap import summarise_all

    return summarise_all({"accuracy": correct.astype(np.float64)[:, None]})["accuracy"]


class Task:
    """The demonstration's data: embedded captions and labels, the memory, queries and scored classes."""

    def __init__(self, model: str, classes: int, seed: int, out: Path, images: int | None = None) -> None:
        from hierarcaps.data import offline_train_split
        from hierarcaps.models import load_encoder
        from hierarcaps.reco.memory import Memory, MemoryItem
        from hierarcaps.reco.memory_build import BuildOptions, write_memory

        self.rows = offline_train_split()
        if images is not None:                                  # a seeded subset of whole images (a quick run)
            kept = set(sorted({r.image_file for r in self.rows},
                              key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())[:images])
            self.rows = [r for r in self.rows if r.image_file in kept]
        self.encoder = load_encoder(model, lazy=True)
        held, memory_images = split_images([r.image_file for r in self.rows], seed)
        self.captions = self.encoder.encode_text([r.positive[-1] for r in self.rows], progress=True)
        self.labels = [r.positive[0] for r in self.rows]
        names = sorted(set(self.labels))
        self.label_vector = dict(zip(names, self.encoder.encode_text(names)))
        self.texts = np.stack([self.label_vector[label] for label in self.labels])
        self.memory_rows = np.array([i for i, r in enumerate(self.rows) if r.image_file in memory_images])
        counts = Counter(self.labels[i] for i in self.memory_rows)
        self.classes = [name for name, _ in counts.most_common(classes)]
        index = {name: c for c, name in enumerate(self.classes)}
        self.queries = np.array([i for i, r in enumerate(self.rows)
                                 if r.image_file in held and self.labels[i] in index])
        self.truth = np.array([index[self.labels[i]] for i in self.queries])
        items = [MemoryItem(f"row{i}", self.labels[i], None, "offline-split", group=self.rows[i].image_file)
                 for i in self.memory_rows]
        self.memory_folder = out / "memory"
        identity = {"name": self.encoder.name, "fingerprint": self.encoder.fingerprint()}
        self.memory = Memory(write_memory(self.memory_folder, self.captions[self.memory_rows],
                                          self.texts[self.memory_rows], items, BuildOptions(index="flat"),
                                          encoder=identity))
        from hierarcaps.reco.labels import NEAR_DUPLICATE_COSINE, near_duplicates

        self.threshold = NEAR_DUPLICATE_COSINE
        self.near = near_duplicates(self.labels, self.classes, self.label_vector, self.threshold)
        self.unseen_rows = np.array([i for i in self.memory_rows if self.labels[i] not in self.near])
        unseen_items = [MemoryItem(f"row{i}", self.labels[i], None, "offline-split", group=self.rows[i].image_file)
                        for i in self.unseen_rows]
        self.zeroshot_folder = out / "memory-zeroshot"
        write_memory(self.zeroshot_folder, self.captions[self.unseen_rows], self.texts[self.unseen_rows],
                     unseen_items, BuildOptions(index="flat"), encoder=identity)

    def pairs(self, setting: str, limit: int | None, seed: int):
        """Training pairs: memory pairs (zero-shot: none of the scored classes), ``limit`` of them at most
        (whole images, by a seeded hash)."""
        from hierarcaps.reco.objectives import Pairs

        rows = list(self.memory_rows if setting == "seen" else self.unseen_rows)
        if limit is not None and limit < len(rows):
            ranked = sorted(rows, key=lambda i: hashlib.sha256(f"{seed}:{self.rows[i].image_file}:{i}".encode())
                            .hexdigest())
            rows = sorted(ranked[:limit])
        rows = np.array(rows)
        labels = [self.labels[i] for i in rows]
        return Pairs(self.captions[rows], self.texts[rows], [self.rows[i].image_file for i in rows], keys=labels,
                     labels=labels, label_vectors=self.label_vector)

    def predictions(self, modules: dict, k: int, swap: bool = False, seed: int = 0) -> np.ndarray:
        """Top-1 class of every query, both sides refined with ``modules`` (an empty dict: frozen). With
        ``swap``, every query fuses another query's neighbours (the control)."""
        import torch

        from hierarcaps.reco.encoder import refine

        queries = self.captions[self.queries]
        names = np.stack([self.label_vector[name] for name in self.classes])
        if "image" in modules:
            neighbours = self.memory.neighbours(queries, "image", k)
            if swap:
                neighbours = neighbours[np.random.default_rng(seed).permutation(len(queries))]
            with torch.inference_mode():
                queries = modules["image"](torch.from_numpy(queries), torch.from_numpy(neighbours)).numpy()
        names = refine(modules, self.memory, names, "text", k) if "text" in modules else names
        return np.argmax(queries @ names.T, axis=1)


def train(task: Task, setting: str, fusion: str, objective: str, args: argparse.Namespace, out: Path,
          limit: int | None = None, seed: int = 0) -> tuple[dict, dict]:
    """A fusion trained and selected on held-out data; (its trained modules, the run's record). It trains under
    ``--fusion auto`` (``learned``: this fusion) so the record says what auto would keep; the trained modules are
    scored."""
    from hierarcaps.reco.config import RecoConfig
    from hierarcaps.reco.train import RecoTrainer

    memory = task.zeroshot_folder if setting == "zeroshot" else task.memory_folder
    config = RecoConfig(memory=str(memory), out=str(out), base=args.model, k=args.k,
                        fusion="auto", learned=fusion, heads=args.heads, sides="both",
                        objective=objective, steps=args.steps, lr=args.lr,
                        batch_size=args.batch_size, eval_every=args.eval_every, patience=args.patience,
                        holdout="concept" if setting == "zeroshot" else "group", val_fraction=0.2, seed=seed,
                        temperature=args.temperature, start=args.start, progress=False)
    trainer = RecoTrainer(config, task.pairs(setting, limit, seed))
    trainer.train()
    info = json.loads((out / "reco.json").read_text())
    record = {"selection": info["selection"], "steps": info["steps"], "train_pairs": len(trainer.train_rows),
              "curve": [(e["step"], e["val_accuracy"]) for e in trainer.loop.log if "val_accuracy" in e]}
    return dict(trainer.modules), record


def score(task: Task, modules: dict, k: int) -> dict:
    correct = task.predictions(modules, k) == task.truth
    swapped = task.predictions(modules, k, swap=True) == task.truth
    return {"correct": correct, "accuracy": accuracy_ci(correct), "swapped": accuracy_ci(swapped)}


def fmt(entry: dict) -> str:
    return f"{entry['value']:.4f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"


def run_setting(task: Task, setting: str, args: argparse.Namespace, out: Path) -> dict:
    from hierarcaps.reco.fusion import FusionConfig, build_fusion

    dim = task.captions.shape[1]
    mean = {side: build_fusion(FusionConfig(kind="mean", dim=dim)) for side in ("image", "text")}
    results = {"frozen": score(task, {}, args.k), "mean": score(task, mean, args.k),
               "mean (query side only)": score(task, {"image": mean["image"]}, args.k)}
    results["mean (query side only)"]["minus_mean"] = paired_ci(results["mean (query side only)"]["correct"],
                                                                results["mean"]["correct"])
    records = {}
    for objective in args.objectives.split(","):
        for fusion in args.fusions.split(","):
            name = f"{fusion} ({objective})"
            modules, records[name] = train(task, setting, fusion, objective, args, out / setting / name)
            results[name] = score(task, modules, args.k)
            results[name]["minus_mean"] = paired_ci(results[name]["correct"], results["mean"]["correct"])
            print(setting, name, fmt(results[name]["accuracy"]), json.dumps(records[name]["selection"]), flush=True)
    return {"results": results, "records": records}


def report(task: Task, runs: dict, args: argparse.Namespace, minutes: float) -> list[str]:
    from hierarcaps.reco.selection import fusion_label

    lines = ["# RECO on real text: the generation pipeline's tier-1 label of a caption", "",
             f"Command: `python benchmarks/reco_demo.py --settings {args.settings} --objectives {args.objectives} "
             f"--fusions {args.fusions} --k {args.k} --heads {args.heads} --steps {args.steps} --lr {args.lr:g} "
             f"--eval-every {args.eval_every} --patience {args.patience} --start {args.start}`", "",
             f"{len(task.queries):,} queries (captions of held-out images whose label is one of the "
             f"{len(task.classes)} most frequent); memory of {len(task.memory):,} (caption, label) pairs of other "
             "images. Chance "
             f"{1 / len(task.classes):.3f}; majority class {np.bincount(task.truth).max() / len(task.truth):.3f}. "
             "Both sides refined; learned fusions start as the best training-free option and are selected on "
             "held-out data (seen: held-out images; zero-shot: held-out classes, half selecting the step, half "
             "deciding auto); 'auto uses' is what `--fusion auto` keeps (the learned fusion only with a paired "
             "interval above 0 over the best training-free option on the deciding half), and 'auto: test' that "
             f"choice's accuracy. Zero-shot training leaves out {len(task.near)} labels that are the scored classes "
             f"or near-duplicates of them (cosine >= {task.threshold}), from the pairs and the training memory "
             f"({len(task.memory_rows) - len(task.unseen_rows):,} memory items).", ""]
    for setting, run in runs.items():
        lines += [f"## {setting}", "", "| fusion | accuracy [95% CI] | minus mean [95% CI] | neighbours swapped | "
                  "kept step | select: learned / mean / mean query side / frozen | decide: learned minus best "
                  "training-free | auto uses | auto: test |", "|---|---|---|---|---|---|---|---|---|"]
        for name, result in run["results"].items():
            record = run["records"].get(name)
            selection = record["selection"] if record else {}
            minus = fmt(result["minus_mean"]) if "minus_mean" in result else "-"
            validation, decided, used, test = "-", "-", "-", "-"
            if "scores" in selection:
                scores = selection["scores"]
                validation = " / ".join(f"{scores[key]['select']:.4f}" for key in ("learned", "mean", "mean_query_side",
                                                                                   "base"))
                if "learned_minus_best_free" in selection:
                    d = selection["learned_minus_best_free"]
                    decided = f"{d['mean']:+.4f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]"
                used = fusion_label(selection["used"], selection["used_sides"])
                picked = name if selection["used"] not in ("mean", "none") else \
                    {"none": "frozen"}.get(selection["used"], "mean (query side only)"
                                           if selection["used_sides"] == ["image"] else "mean")
                test = f"{run['results'][picked]['accuracy']['value']:.4f}"
            lines.append(f"| {name} | {fmt(result['accuracy'])} | {minus} | {fmt(result['swapped'])} | "
                         f"{selection.get('kept_step', '-')} | {validation} | {decided} | {used} | {test} |")
        lines.append("")
    lines.append(f"Wall time {minutes:.1f} min (CPU, 2 cores).")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="any text encoder spec (a CLIP's text tower works too)")
    p.add_argument("--settings", default="seen,zeroshot")
    p.add_argument("--objectives", default="vocabulary,in-batch")
    p.add_argument("--fusions", default="transformer", help="learned fusions to train (transformer, mlp, vote)")
    p.add_argument("--classes", type=int, default=30)
    p.add_argument("--images", type=int, default=None, help="a seeded subset of the split's images (default: all)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--start", default="best", choices=["best", "mean", "query"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/reco-demo")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--tag", default="", help="suffix of the result files (ablations)")
    return p


def main() -> None:
    args = parser().parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    task = Task(args.model, args.classes, args.seed, out, args.images)
    runs = {setting: run_setting(task, setting, args, out) for setting in args.settings.split(",")}
    lines = report(task, runs, args, (time.perf_counter() - started) / 60)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    (results / f"reco_demo{suffix}.md").write_text("\n".join(lines) + "\n")
    clean = {setting: {"records": run["records"],
                       "results": {name: {k: v for k, v in r.items() if k != "correct"}
                                   for name, r in run["results"].items()}} for setting, run in runs.items()}
    (results / f"reco_demo{suffix}.json").write_text(json.dumps({"args": vars(args), "queries": len(task.queries),
                                                                  "memory_items": len(task.memory), "runs": clean},
                                                                 indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
