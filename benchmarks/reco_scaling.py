"""How the learned fusion's margin over mean fusion grows with training data, on the label task of
``reco_demo.py`` (seen classes): learned minus mean accuracy on the same queries, with a paired 95% bootstrap CI,
for each number of training pairs (whole images, a seeded subset) and objective. The learned model is the one
selected on held-out data (``--fusion transformer``: the learned fusion is scored even where it did not beat
mean fusion on validation, so the curve shows the method itself).

    python benchmarks/reco_scaling.py [--sizes 1000,2000,4000,8000,0] [--objectives in-batch,supervised]

A size of 0 is every training pair. Writes benchmarks/results/reco_scaling.{md,json,png}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import reco_demo


def plot(rows: list[dict], path: Path) -> Path | None:
    """Learned minus mean fusion (both sides: solid; query side only: dashed) against training pairs."""
    from hierarcaps.plotting import pyplot

    if (plt := pyplot(path)) is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for n, objective in enumerate(sorted({r["objective"] for r in rows})):
        for key, style, against in (("minus_mean", "o-", "both sides"), ("minus_query_side_mean", "s--", "query side")):
            points = sorted((r["pairs"], r[key]) for r in rows if r["objective"] == objective)
            x = [p for p, _ in points]
            y = np.array([d["value"] for _, d in points])
            low = np.array([d["ci95"][0] for _, d in points])
            high = np.array([d["ci95"][1] for _, d in points])
            ax.errorbar(x, y, yerr=[y - low, high - y], fmt=style, capsize=3, color=f"C{n}",
                        label=f"{objective} minus mean ({against})")
    ax.axhline(0, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("training pairs")
    ax.set_ylabel("accuracy difference")
    ax.set_title("RECO learned fusion against mean fusion (label task, seen classes; 95% CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = reco_demo.parser()
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--sizes", default="1000,2000,4000,8000,0")
    parser.set_defaults(objectives="in-batch,supervised", out="runs/reco-scaling", settings="seen")
    args = parser.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    task = reco_demo.Task(args.model, args.classes, args.seed, out, args.images)
    from hierarcaps.reco.fusion import FusionConfig, build_fusion

    dim = task.captions.shape[1]
    mean = {side: build_fusion(FusionConfig(kind="mean", dim=dim)) for side in ("image", "text")}
    mean_correct = task.predictions(mean, args.k) == task.truth
    query_mean_correct = task.predictions({"image": mean["image"]}, args.k) == task.truth
    rows = []
    for objective in args.objectives.split(","):
        for size in map(int, args.sizes.split(",")):
            limit = size or None
            modules, record = reco_demo.train(task, "seen", "transformer", objective, args,
                                              out / f"{objective}-{size}", limit=limit, seed=args.seed)
            correct = task.predictions(modules, args.k) == task.truth
            rows.append({"objective": objective, "pairs": record["train_pairs"], "kept_step": record["selection"]
                         ["kept_step"], "accuracy": reco_demo.accuracy_ci(correct),
                         "minus_mean": reco_demo.paired_ci(correct, mean_correct),
                         "minus_query_side_mean": reco_demo.paired_ci(correct, query_mean_correct),
                         "selection": record["selection"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "selection"}), flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    picture = plot(rows, results / "reco_scaling.png")
    mean_accuracy = reco_demo.accuracy_ci(mean_correct)
    lines = ["# RECO fusion against mean fusion as training data grows (label task, seen classes)", "",
             f"Command: `python benchmarks/reco_scaling.py --sizes {args.sizes} --objectives {args.objectives} "
             f"--steps {args.steps} --eval-every {args.eval_every} --patience {args.patience}`; mean fusion "
             f"(both sides): {reco_demo.fmt(mean_accuracy)}; mean fusion on the query side only: "
             f"{reco_demo.fmt(reco_demo.accuracy_ci(query_mean_correct))}.", "",
             "| objective | training pairs | kept step | learned accuracy | minus mean, both sides [95% CI] | "
             "minus mean, query side [95% CI] |",
             "|---|---|---|---|---|---|",
             *(f"| {r['objective']} | {r['pairs']:,} | {r['kept_step']} | {reco_demo.fmt(r['accuracy'])} | "
               f"{reco_demo.fmt(r['minus_mean'])} | {reco_demo.fmt(r['minus_query_side_mean'])} |" for r in rows),
             "",
             f"Plot: `{picture.name if picture else '(not drawn)'}`. Wall time "
             f"{(time.perf_counter() - started) / 60:.1f} min (CPU, 2 cores)."]
    (results / "reco_scaling.md").write_text("\n".join(lines) + "\n")
    (results / "reco_scaling.json").write_text(json.dumps({"args": vars(args), "mean": mean_accuracy, "rows": rows},
                                                          indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
