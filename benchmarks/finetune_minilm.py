"""RE fine-tuning of the packaged all-MiniLM-L6-v2 on the offline training split, scored before and after.

1. A learning-rate sweep of short runs, judged on held-out training rows only (images never trained on):
   the lr with the lowest held-out RE objective wins. The test set is not looked at.
2. A full run with that lr for the step budget.
3. `hierarcaps evaluate` of the base and the fine-tuned model on the 1K test set (text metrics, CIs,
   caption-length baselines). Writes benchmarks/results/finetune_minilm.{json,md}.

    python benchmarks/finetune_minilm.py --steps 1200 --sweep-steps 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LRS = (1e-5, 5e-5, 2e-4)
ROWS = ("d_corr", "text_query/precision", "text_query/recall", "text_query/order_aware_recall",
        "text_query/recall_tier1", "text_query/recall_tier2", "text_query/recall_tier3")


def run(config_kwargs: dict) -> dict:
    from hierarcaps.finetune.trainer import FinetuneConfig, Trainer

    trainer = Trainer(FinetuneConfig(**config_kwargs))
    final = trainer.train()
    info = json.loads((final / "hierarcaps_model.json").read_text())
    last = next(e for e in reversed(trainer.log) if "val_loss" in e)
    return {"lr": config_kwargs["lr"], "steps": trainer.step, "model": str(final),
            "val_loss": last["val_loss"], "val_d_corr": last["val_d_corr"],
            "val_d_corr_start": trainer.log[0]["val_d_corr"], "throughput": info["throughput"]}


def fmt(entry: dict | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['value']:.4f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--sweep-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", default="runs/minilm-re")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()

    from hierarcaps.benchmarks.harness import EvalOptions, evaluate

    common = dict(model="minilm", train="offline", batch_size=args.batch_size, warmup_steps=20, val_rows=256,
                  checkpoint_every=100, seed=0)
    started = time.perf_counter()
    sweep = []
    for lr in LRS:
        result = run({**common, "lr": lr, "max_steps": args.sweep_steps, "val_every": args.sweep_steps,
                      "out": f"{args.runs}/sweep-lr{lr:g}"})
        print(json.dumps(result), flush=True)
        sweep.append(result)
    best = min(sweep, key=lambda r: r["val_loss"])
    final = run({**common, "lr": best["lr"], "max_steps": args.steps, "val_every": max(1, args.steps // 6),
                 "out": f"{args.runs}/final"})
    print(json.dumps(final), flush=True)

    options = EvalOptions(progress=False)
    before, after = evaluate("minilm", options), evaluate(final["model"], options)
    baselines = before["baselines"]
    lines = [
        "# RE fine-tuning of all-MiniLM-L6-v2 (offline training split, CPU)", "",
        f"Command: `python benchmarks/finetune_minilm.py --steps {args.steps} --sweep-steps {args.sweep_steps}`",
        f"(batch {args.batch_size}, AdamW, 20 warm-up steps, loss weights 10/1/1, seed 0).", "",
        "## Learning-rate sweep (held-out training rows only; lowest held-out loss wins)", "",
        "| lr | steps | held-out loss | held-out d_corr (start -> end) |", "|---|---|---|---|",
        *(f"| {r['lr']:g} | {r['steps']} | {r['val_loss']:.4f} | {r['val_d_corr_start']:.4f} -> {r['val_d_corr']:.4f} |"
          for r in sweep), "",
        f"Chosen lr: {best['lr']:g}. Final run: {final['steps']} steps, "
        f"{final['throughput']['items_per_s']:.2f} items/s ({final['throughput']['train_seconds'] / 60:.1f} min).", "",
        "## 1K test set (text-only model: text-query variant; 95% bootstrap CIs)", "",
        "| metric | before | after RE | length (chars) | length (words) |", "|---|---|---|---|---|",
        *(f"| {m} | {fmt(before['metrics'].get(m))} | {fmt(after['metrics'].get(m))} | "
          f"{fmt(baselines['length_chars'].get(m))} | {fmt(baselines['length_words'].get(m))} |" for m in ROWS),
        "", f"Total wall time: {(time.perf_counter() - started) / 60:.1f} min.",
    ]
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_minilm.md").write_text("\n".join(lines) + "\n")
    (out / "finetune_minilm.json").write_text(json.dumps(
        {"sweep": sweep, "final": final, "before": before["metrics"], "after": after["metrics"],
         "baselines": baselines}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
