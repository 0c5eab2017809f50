"""CLI subcommand ``finetune``."""

from __future__ import annotations

import argparse
import dataclasses

from ..configs import add_options, from_options
from ..models.registry import spec_help
from ..subcommand import Command, echo
from ..training import TrainingConfig
from .trainer import FinetuneConfig

SHARED = {f.name for f in dataclasses.fields(TrainingConfig)}
OPTIONS = [f.name for f in dataclasses.fields(FinetuneConfig) if f.name not in SHARED] + \
    [f.name for f in dataclasses.fields(FinetuneConfig) if f.name in SHARED and f.name != "progress"]
"""Every setting of a run is an option, the fine-tuner's own first (``progress`` is ``--quiet``)."""
HELP = {
    "model": "to fine-tune: " + spec_help(),
    "train": "'offline' (expanded rows of non-test images) or the official training file, path or URL",
    "out": "run folder: checkpoints/, model/, log.json, loss_curves.png",
    "objective": "RE (default) or entailment cones",
    "negative_pairing": "sibling: positive tier k with negative tier k, as the reference trainer; child: with "
                        "negative tier k+1 (an ablation that lowers d_corr)",
    "main_weight": "weight of the RE (or cone) term",
    "steps": "optimizer steps (default: as many as --epochs take)",
    "val_fraction": "images held out for validation",
    "eval_every": "steps between held-out evaluations (loss and d_corr)",
    "keep": "the weights a run ends with: the last step's, or those of the best held-out d_corr",
    "max_grad_norm": "clip the gradient norm to this (default: no clipping, as the authors' trainer; gradient "
                     "norms of 29-54 were measured, so any value here changes every step)",
    "precision": "fp32: exact, as the authors' trainer; bf16: autocast (faster on GPUs, not the authors' numbers)",
    "val_rows": "held-out rows evaluated (the first of the held-out images' rows)",
    "weight_decay": "AdamW weight decay (0.01: torch's default, which the authors' trainer uses)",
    "warmup_steps": "linear warm-up steps (0: none, as the authors' trainer)",
    "device": "cpu, cuda, cuda:N; unset: the GPU when there is one",
    "pullback_weight": "weight of the pullback to the starting model's embeddings",
    "hard_weight": "weight of the hard term on the worst pairs",
    "epochs": "passes over the training rows (when --steps is not given)",
    "lr": "AdamW learning rate (1e-7: the authors' trainer)",
    "batch_size": "rows per micro-batch (8: the authors' trainer)",
    "grad_accum": "micro-batches per optimizer step",
    "checkpoint_every": "steps between checkpoints (a killed run resumes from the newest)",
    "patience": "stop after this many held-out evaluations without a better d_corr (unset: never)",
    "seed": "seed of the held-out split, the batch order and the model's start",
}


def _finetune_args(p: argparse.ArgumentParser) -> None:
    add_options(p, FinetuneConfig, OPTIONS, HELP)
    p.add_argument("--quiet", action="store_true")


def _finetune(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    trainer = Trainer(from_options(FinetuneConfig, args, progress=not args.quiet))
    final = trainer.train()
    last = next((e for e in reversed(trainer.log) if "val_loss" in e), {})
    echo(f"saved {final} after {trainer.step} steps; held-out loss {last.get('val_loss', float('nan')):.4f}, "
         f"held-out d_corr {last.get('val_d_corr', float('nan')):.4f}")
    echo(f"score it: hierarcaps evaluate --model {final}")
    return 0


COMMANDS = (
    Command("finetune", "fine-tune a model's text side with the RE (or entailment-cone) objective; resumable",
         _finetune_args, _finetune),
)
