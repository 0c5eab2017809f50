"""Fine-tune the text side of a model with the RE (or entailment-cone) objective.

Only the text tower and text projection train; everything else is frozen and stays bit-identical. The run
is the package's one training loop (``hierarcaps.training``): checkpoints (weights of the trained part,
optimizer, scheduler, RNG, log) written atomically every ``checkpoint_every`` steps; re-running the same
command after a kill resumes from the newest one and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..checkpoints import run_hash
from ..data.records import content_checksum
from ..errors import HierarcapsError
from ..fields import bounded
from ..models.registry import CHECKPOINT_FILE, DEFAULT_MODEL, load_encoder
from ..models.torch_utils import TorchEncoder, training_autocast
from ..outputs import Journal, claim_folder, folder_lock, recover
from ..training import TrainingConfig, TrainingLoop, holdout, write_log
from .data import OFFLINE, group_of, training_records
from .losses import NEGATIVE_PAIRINGS, OBJECTIVES, LossWeights

RUN_KIND = "finetune run"
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass
class FinetuneConfig(TrainingConfig):
    """Everything that determines a run; its hash guards resuming into a different run. ``steps`` None: as many
    as ``epochs`` of the training rows take. The defaults are the authors' trainer (``code/train.py``): AdamW at
    lr 1e-7 with torch's defaults (weight decay 0.01), batch 8, one epoch, no warm-up, no gradient clipping,
    fp32; ``max_grad_norm`` and ``precision="bf16"`` (autocast) are options."""

    model: str = DEFAULT_MODEL
    train: str = OFFLINE
    out: str = "runs/finetune"
    objective: str = bounded("re", choices=("re", "cone"))
    negative_pairing: str = bounded("sibling", choices=NEGATIVE_PAIRINGS)
    pullback_weight: float = bounded(10.0, low=0.0, high=1e6)
    main_weight: float = bounded(1.0, low=0.0, high=1e6)
    hard_weight: float = bounded(1.0, low=0.0, high=1e6)
    epochs: float = bounded(1.0, low=0.0, high=10**6, open_low=True)
    val_rows: int = bounded(256, low=1, high=10**7)
    device: str | None = None
    steps: int | None = bounded(None, low=1, high=10**8)
    batch_size: int = bounded(8, low=1, high=65536)
    lr: float = bounded(1e-7, low=0.0, high=1.0, open_low=True)
    eval_every: int = bounded(250, low=1, high=10**8)
    precision: str = bounded("fp32", choices=PRECISIONS)

    def run_hash(self) -> str:
        return run_hash(self, ignore=("device", "progress", "out"))


class Trainer:
    """One fine-tuning run: data, model, the loop's task (the objective on a batch, held-out d_corr), outputs."""

    selection = "val_d_corr"
    higher_is_better = True

    def __init__(self, config: FinetuneConfig) -> None:
        import torch

        self.config = config
        self.out = claim_folder(config.out, RUN_KIND)
        records = training_records(config.train)
        train, held = holdout([group_of(r) for r in records], config.val_fraction, config.seed)
        self.train_rows, self.val_rows = [records[i] for i in train], [records[i] for i in held][:config.val_rows]
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
        self.objective = OBJECTIVES[config.objective]
        self.weights = LossWeights(config.pullback_weight, config.main_weight, config.hard_weight)
        self.loop = TrainingLoop(self, config, self.out, config.run_hash(), total_steps=self._total_steps(),
                                 desc="Fine-tuning")

    def _total_steps(self) -> int:
        per_epoch = len(self.train_rows) // (self.config.batch_size * self.config.grad_accum)
        if self.config.steps is not None:
            return self.config.steps
        return max(1, math.floor(per_epoch * self.config.epochs))

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def log(self) -> list[dict[str, Any]]:
        return self.loop.log

    # -- the objective on one batch ------------------------------------------------------------------
    def embed_rows(self, rows: list[Any]) -> tuple[Any, Any, Any]:
        """Root (recomputed with the current text encoder), positive and negative chains: (d,), (B, K, d) x 2."""
        import torch

        k = len(rows[0].positive)
        texts = [t for r in rows for t in r.positive] + [t for r in rows for t in r.negative]
        with training_autocast(self.encoder.device, self.config.precision):
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

    # -- the task ---------------------------------------------------------------------------------------
    def parameters(self) -> list[Any]:
        return [p for _, p in self.trainable]

    def trained_state(self) -> dict[str, Any]:
        return {n: p.detach().clone() for n, p in self.trainable}

    def load_trained_state(self, state: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for name, p in self.trainable:
                p.copy_(state[name])

    def after_step(self) -> None:
        pass

    def loss(self, micro_batch: int) -> dict[str, Any]:
        from ..training import batch_rows

        # dropout stays off (eval mode), as in CLIP whose dropout is 0: the pullback term then measures drift
        # from the starting model rather than dropout noise, and runs are exactly reproducible
        self.encoder.model.eval()
        rows = next(batch_rows(len(self.train_rows), self.config.batch_size, self.config.seed, micro_batch))
        return self.batch_terms([self.train_rows[i] for i in rows])[0]

    def evaluate(self) -> dict[str, float]:
        """Held-out loss and d_corr (Kendall tau of radius vs tier, a tie counting half) on rows whose images
        training never saw. Select models on d_corr: the RE loss can be negative and does not fall as d_corr
        rises."""
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

    # -- the run ------------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train (or resume, or finish an interrupted final write) under the run folder's lock."""
        with folder_lock(self.out, what=f"the run {self.out}"):
            recover(self.out)
            final = self.out / "model" / CHECKPOINT_FILE
            if final.exists():   # a finished run: the same settings have nothing left to do
                info = json.loads(final.read_text())
                if info.get("run_hash") != self.config.run_hash():
                    raise HierarcapsError(f"{self.out} holds a different run (finished); use a new --out or delete it")
                self.loop.step, self.loop.log = info["steps"], json.loads((self.out / "log.json").read_text())["log"]
                return final.parent
            summary = self.loop.run()
            return self.finish({"train_seconds": summary["train_seconds"], "items_per_s": summary["items_per_s"]})

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
        swap = [("rename", "model", "model.old")] if final.exists() else []
        Journal(self.out, "final write of the model", [*swap, ("rename", "model.tmp", "model"),
                                                        ("remove", "model.old")]).run()
        write_log(self.out, self.log, config=dataclasses.asdict(self.config), throughput=throughput)
        return final
