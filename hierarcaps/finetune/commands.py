"""CLI subcommand ``finetune``."""

from __future__ import annotations

import argparse

from ..cli import command
from ..cli_options import echo
from ..models.registry import spec_help
from .losses import NEGATIVE_PAIRINGS
from .trainer import FinetuneConfig


def _finetune_args(p: argparse.ArgumentParser) -> None:
    d = FinetuneConfig()
    p.add_argument("--model", default=d.model, help="to fine-tune: " + spec_help())
    p.add_argument("--train", default=d.train,
                   help="'offline' (expanded rows of non-test images) or the official training file, path or URL")
    p.add_argument("--out", default=d.out, help="run folder: checkpoints/, model/, log.json, loss_curves.png")
    p.add_argument("--objective", choices=["re", "cone"], default=d.objective, help="RE (default) or entailment cones")
    p.add_argument("--negative-pairing", choices=NEGATIVE_PAIRINGS, default=d.negative_pairing,
                   help="sibling: positive tier k with negative tier k, as the reference trainer; child: with "
                        "negative tier k+1 (an ablation that lowers d_corr)")
    p.add_argument("--pullback-weight", type=float, default=d.pullback_weight)
    p.add_argument("--main-weight", type=float, default=d.main_weight, help="weight of the RE (or cone) term")
    p.add_argument("--hard-weight", type=float, default=d.hard_weight)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--steps", dest="max_steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="images held out for validation")
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")


@command("finetune", "fine-tune a model's text side with the RE (or entailment-cone) objective; resumable",
         _finetune_args)
def _finetune(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    options = {k: v for k, v in vars(args).items() if k in FinetuneConfig.__dataclass_fields__}
    config = FinetuneConfig(**options, progress=not args.quiet)
    trainer = Trainer(config)
    final = trainer.train()
    last = next((e for e in reversed(trainer.log) if "val_loss" in e), {})
    echo(f"saved {final} after {trainer.step} steps; held-out loss {last.get('val_loss', float('nan')):.4f}, "
          f"held-out d_corr {last.get('val_d_corr', float('nan')):.4f}")
    echo(f"score it: hierarcaps evaluate --model {final}")
    return 0
