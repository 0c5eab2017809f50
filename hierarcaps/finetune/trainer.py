"""Fine-tune the text side of a model with the RE (or entailment-cone) objective.

Only the text tower and text projection train; everything else is frozen and stays bit-identical.
Checkpoints (weights of the trained part, optimizer, scheduler, RNG, log) are written atomically every
``checkpoint_every`` steps; re-running the same command after a kill resumes from the newest one and ends
with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_open
from ..checkpoints import CheckpointStore, run_hash
from ..configs import check_fields, setting
from ..data.records import content_checksum
from ..errors import HierarcapsError
from ..models.registry import CHECKPOINT_FILE, load_encoder
from ..models.torch_utils import TorchEncoder, autocast
from ..training_log import plot_curves
from .data import OFFLINE, micro_batches, split_held_out, training_records
from .losses import NEGATIVE_PAIRINGS, OBJECTIVES, LossWeights


@dataclasses.dataclass
class FinetuneConfig:
    """Everything that determines a run; its hash guards resuming into a different run."""

    model: str = "minilm"
    train: str = OFFLINE
    out: str = "runs/finetune"
    objective: str = setting("re", choices=("re", "cone"))
    negative_pairing: str = setting("sibling", choices=NEGATIVE_PAIRINGS)
    pullback_weight: float = setting(10.0, low=0.0, high=1e6)
    main_weight: float = setting(1.0, low=0.0, high=1e6)
    hard_weight: float = setting(1.0, low=0.0, high=1e6)
    lr: float = setting(1e-7, low=0.0, high=1.0, open_low=True)
    weight_decay: float = setting(0.01, low=0.0, high=10.0)
    warmup_steps: int = setting(0, low=0, high=10**8)
    batch_size: int = setting(8, low=1, high=65536)
    grad_accum: int = setting(1, low=1, high=65536)
    epochs: float = setting(1.0, low=0.0, high=10**6, open_low=True)
    max_steps: int | None = setting(None, low=1, high=10**8)
    max_grad_norm: float | None = setting(1.0, low=0.0, open_low=True)
    val_fraction: float = setting(0.05, low=0.0, high=0.5)
    val_every: int = setting(250, low=1, high=10**8)
    val_rows: int = setting(256, low=1, high=10**7)
    checkpoint_every: int = setting(200, low=1, high=10**8)
    seed: int = setting(0, low=0, high=2**32 - 1)
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)

    def run_hash(self) -> str:
        return run_hash(self, ignore=("device", "progress", "out"))


class Trainer:
    """One fine-tuning run: data, model, optimizer, loop, checkpoints, outputs."""

    def __init__(self, config: FinetuneConfig) -> None:
        import torch

        self.config = config
        self.out = Path(config.out)
        records = training_records(config.train)
        self.train_rows, self.val_rows = split_held_out(records, config.val_fraction, config.seed)
        self.val_rows = self.val_rows[:config.val_rows]
        self.data_checksum = content_checksum(records)
        torch.manual_seed(config.seed)
        encoder = load_encoder(config.model, device=config.device)
        try:
            trainable = {id(p) for p in encoder.text_parameters()} if isinstance(encoder, TorchEncoder) else set()
        except NotImplementedError:
            trainable = set()
        if not trainable:
            raise HierarcapsError(f"{config.model}: this adapter ({type(encoder).__name__}) cannot be fine-tuned; "
                                  "use a transformers CLIP-family model, open_clip, or a mean-pooling text model")
        self.encoder = encoder
        self.base_name, self.base_fingerprint = encoder.name, encoder.fingerprint()
        self.trainable = [(n, p) for n, p in encoder.model.named_parameters() if id(p) in trainable]
        self.starting_weights = [p.detach().clone() for _, p in self.trainable]
        for p in encoder.model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.optimizer = torch.optim.AdamW([p for _, p in self.trainable], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.total_steps = self._total_steps()
        warmup = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.objective = OBJECTIVES[config.objective]
        if config.negative_pairing not in NEGATIVE_PAIRINGS:
            raise HierarcapsError(f"negative pairing must be one of {', '.join(NEGATIVE_PAIRINGS)}, "
                                  f"not {config.negative_pairing!r}")
        self.weights = LossWeights(config.pullback_weight, config.main_weight, config.hard_weight)
        self.step = 0
        self.log: list[dict[str, Any]] = []
        self.checkpoints = CheckpointStore(self.out, config.run_hash())

    def _total_steps(self) -> int:
        per_epoch = len(self.train_rows) // (self.config.batch_size * self.config.grad_accum)
        if self.config.max_steps is not None:
            return self.config.max_steps
        return max(1, math.floor(per_epoch * self.config.epochs))

    # -- the objective on one batch ------------------------------------------------------------------
    def embed_rows(self, rows: list[Any]) -> tuple[Any, Any, Any]:
        """Root (recomputed with the current text encoder), positive and negative chains: (d,), (B, K, d) x 2."""
        import torch

        k = len(rows[0].positive)
        texts = [t for r in rows for t in r.positive] + [t for r in rows for t in r.negative]
        with autocast(self.encoder.device):
            features = self.encoder.text_features(["", *texts]).float()
        emb = torch.nn.functional.normalize(features, dim=-1)
        chains = emb[1:].reshape(2, len(rows), k, -1)
        return emb[0], chains[0], chains[1]

    def _swap_starting_weights(self) -> None:
        """Exchange the trained parameters' values with the starting model's (a pointer swap, no copy)."""
        for i, (_, p) in enumerate(self.trainable):
            p.data, self.starting_weights[i] = self.starting_weights[i], p.data

    def starting_embeddings(self, rows: list[Any]) -> tuple[Any, Any]:
        """The starting model's embedding of this batch's chains, for the pullback term.

        Computed per batch on exactly the live forward's inputs, as the reference trainer does, so a short
        run embeds only what it trains on and a resumed run sees the values an uninterrupted one saw.
        """
        import torch

        self._swap_starting_weights()
        try:
            with torch.no_grad():
                _, pos, neg = self.embed_rows(rows)
        finally:
            self._swap_starting_weights()
        return pos, neg

    def batch_terms(self, rows: list[Any]) -> tuple[dict[str, Any], Any]:
        """The objective's terms on one batch, and the positive chains' radii (B, K)."""
        pos_orig, neg_orig = self.starting_embeddings(rows)
        root, pos, neg = self.embed_rows(rows)
        terms = self.objective(pos, neg, root, pos_orig, neg_orig, self.weights, self.config.negative_pairing)
        return terms, (pos - root).norm(dim=-1)

    def batch_loss(self, rows: list[Any]) -> dict[str, Any]:
        return self.batch_terms(rows)[0]

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        import torch

        return self.checkpoints.save(self.step, {
            "trainable": {n: p.detach().clone() for n, p in self.trainable},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "log": self.log})

    def resume(self) -> bool:
        """Load the newest complete checkpoint of this run, if any."""
        import torch

        state = self.checkpoints.latest()
        if state is None:
            return False
        with torch.no_grad():
            for name, p in self.trainable:
                p.copy_(state["trainable"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.log = state["step"], state["log"]
        return True

    # -- validation --------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Held-out loss and d_corr (Kendall tau of radius vs tier) on rows whose images training never saw.

        Select models on d_corr: the RE loss can be negative and does not fall as d_corr rises.
        """
        import torch

        from ..metrics.hierarchy import kendall_tau_rows

        if not self.val_rows:
            return {}
        losses, radii = [], []
        with torch.no_grad():
            for start in range(0, len(self.val_rows), self.config.batch_size):
                rows = self.val_rows[start:start + self.config.batch_size]
                terms, row_radii = self.batch_terms(rows)
                losses.append(float(terms["loss"]) * len(rows))
                radii.append(row_radii.cpu().numpy())
        return {"val_loss": sum(losses) / len(self.val_rows),
                "val_d_corr": float(kendall_tau_rows(np.concatenate(radii)).mean())}

    # -- the loop ------------------------------------------------------------------------------------------
    def train(self) -> Path:
        import torch
        from tqdm.auto import tqdm

        config = self.config
        final = self.out / "model" / CHECKPOINT_FILE
        if final.exists():   # a finished run: the same settings have nothing left to do
            info = json.loads(final.read_text())
            if info.get("run_hash") != config.run_hash():
                raise HierarcapsError(f"{self.out} holds a different run (finished); use a new --out or delete it")
            self.step, self.log = info["steps"], json.loads((self.out / "log.json").read_text())["log"]
            return final.parent
        resumed = self.resume()
        if not resumed:
            self.log.append({"step": 0, **self.validate()})
        # dropout stays off (eval mode), as in CLIP whose dropout is 0: the pullback term then measures
        # drift from the starting model rather than dropout noise, and runs are exactly reproducible
        self.encoder.model.eval()
        batches = micro_batches(len(self.train_rows), config.batch_size, config.seed,
                                start=self.step * config.grad_accum)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="Fine-tuning", disable=not config.progress,
                   unit="step")
        started, first_step, running = time.perf_counter(), self.step, None
        while self.step < self.total_steps:
            terms_sum: dict[str, float] = {}
            for _ in range(config.grad_accum):
                rows = [self.train_rows[i] for i in next(batches)]
                terms = self.batch_loss(rows)
                (terms["loss"] / config.grad_accum).backward()
                for name, value in terms.items():
                    terms_sum[name] = terms_sum.get(name, 0.0) + float(value.detach()) / config.grad_accum
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            entry = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms_sum}
            if self.step % config.val_every == 0 or self.step == self.total_steps:
                entry.update(self.validate())
            self.log.append(entry)
            running = terms_sum["loss"] if running is None else 0.95 * running + 0.05 * terms_sum["loss"]
            bar.set_postfix(loss=f"{running:.4f}")
            bar.update(1)
            if self.step % config.checkpoint_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        seconds = time.perf_counter() - started
        items = (self.step - first_step) * config.batch_size * config.grad_accum
        throughput = {"train_seconds": seconds, "items_per_s": items / seconds if seconds else None}
        return self.finish(throughput)

    # -- outputs -----------------------------------------------------------------------------------------
    def finish(self, throughput: dict[str, Any]) -> Path:
        """Write the final model folder (loadable by `hierarcaps evaluate --model`), the log and the curves."""
        self.encoder.model.eval()
        self.encoder.forget_fingerprint()
        final = self.out / "model"
        tmp = self.out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.encoder.save(tmp)
        info = {
            "name": f"{Path(self.base_name).name}+{self.config.objective}-ft",
            "spec_prefix": self.encoder.spec_prefix,
            "base_model": {"spec": self.config.model, "name": self.base_name, "fingerprint": self.base_fingerprint},
            "objective": self.config.objective,
            "training": dataclasses.asdict(self.config),
            "data": {"source": self.config.train, "train_rows": len(self.train_rows),
                     "held_out_rows": len(self.val_rows), "checksum": self.data_checksum},
            "steps": self.step,
            "run_hash": self.config.run_hash(),
            "throughput": throughput,
            "package": {"name": "hierarcaps", "version": __version__},
        }
        (tmp / CHECKPOINT_FILE).write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        with atomic_open(self.out / "log.json") as handle:
            json.dump({"config": dataclasses.asdict(self.config), "throughput": throughput, "log": self.log},
                      handle, indent=1)
        plot_curves(self.log, self.out / "loss_curves.png")
        return final
