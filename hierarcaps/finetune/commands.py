"""CLI subcommand ``finetune``."""

from __future__ import annotations

import argparse

from ..commandline import Command, echo
from ..configs import add_options, from_options
from ..models.registry import spec_help
from .trainer import FinetuneConfig

OPTIONS = ["model", "train", "out", "objective", "negative_pairing", "pullback_weight", "main_weight", "hard_weight",
           "lr", "weight_decay", "warmup_steps", "batch_size", "grad_accum", "epochs", "steps", "val_fraction",
           "eval_every", "checkpoint_every", "keep", "patience", "seed", "device"]
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
