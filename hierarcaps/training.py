"""The one training loop that RE fine-tuning, RECO fusion and Flan-T5 distillation share.

A trainer supplies a :class:`Task` (what trains, the loss of a micro-batch, a held-out evaluation); the loop
owns the rest, once: the settings every trainer names alike (:class:`TrainingConfig`), the held-out split by
whole groups, seeded resumable batch order, AdamW with linear warm-up, gradient accumulation and clipping,
checkpoints (atomic, newest first, guarded by the run's settings), model selection on the held-out metric the
model will be judged by (keep the best evaluation's weights, stop early after ``patience`` evaluations without
improvement), the log (one entry per step: its terms, the learning rate, and ``val_*`` values where it
evaluated) and its curves. Re-running a killed run resumes from the newest checkpoint and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .checkpoints import CheckpointStore
from .configs import check_fields
from .errors import DataError
from .fields import bounded


@dataclasses.dataclass
class TrainingConfig:
    """The settings every trainer has, under the same names. ``steps`` are optimizer steps (``grad_accum``
    micro-batches each); ``keep`` says which weights a run ends with: the last step's, or those of the best
    held-out evaluation; ``patience`` stops a run after that many evaluations without improvement."""

    steps: int | None = bounded(1000, low=0, high=10**8)
    batch_size: int = bounded(32, low=1, high=1 << 20)
    grad_accum: int = bounded(1, low=1, high=65536)
    lr: float = bounded(1e-4, low=0.0, high=1.0, open_low=True)
    weight_decay: float = bounded(0.01, low=0.0, high=100.0)
    warmup_steps: int = bounded(0, low=0, high=10**8)
    max_grad_norm: float | None = bounded(None, low=0.0, open_low=True)
    eval_every: int = bounded(100, low=1, high=10**8)
    checkpoint_every: int = bounded(200, low=1, high=10**8)
    val_fraction: float = bounded(0.05, low=0.0, high=0.5)
    seed: int = bounded(0, low=0, high=2**32 - 1)
    keep: str = bounded("last", choices=("last", "best"))
    patience: int | None = bounded(None, low=1, high=10**6)
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


def holdout(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): whole groups held out (an image and all its rows, a class, a chain),
    chosen by a seeded hash of the group, so the split does not depend on row order."""
    keys = sorted(set(groups))
    ranked = sorted(keys, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held = set(ranked[:round(len(keys) * fraction)])
    is_held = np.array([g in held for g in groups], dtype=bool)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def batch_rows(n_rows: int, batch_size: int, seed: int, start: int = 0) -> Iterator[np.ndarray]:
    """Row indices of micro-batch ``start``, ``start + 1``, ...: epoch e is a permutation seeded by (seed, e),
    so a resumed run continues with exactly the batches an uninterrupted run would have drawn."""
    per_epoch = n_rows // batch_size
    if per_epoch == 0:
        raise DataError(f"{n_rows} training rows are fewer than one batch of {batch_size}")
    index = start
    while True:
        epoch, position = divmod(index, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n_rows)
        yield order[position * batch_size:(position + 1) * batch_size]
        index += 1


class Task(Protocol):
    """What a trainer gives the loop."""

    selection: str               # the held-out value models are selected on (a key of ``evaluate()``)
    higher_is_better: bool

    def parameters(self) -> list[Any]:
        """The tensors that train."""

    def trained_state(self) -> dict[str, Any]:
        """Their values (copied), for checkpoints and the best evaluation's weights."""

    def load_trained_state(self, state: dict[str, Any]) -> None: ...

    def loss(self, micro_batch: int) -> dict[str, Any]:
        """The terms of micro-batch number ``micro_batch`` (``loss`` is what is minimised)."""

    def evaluate(self) -> dict[str, float]:
        """Held-out values, named ``val_*``; empty when nothing is held out."""

    def after_step(self) -> None:
        """Called after each optimizer step (clamping a temperature, say)."""


@dataclasses.dataclass
class Selected:
    """The best held-out evaluation so far."""

    step: int
    value: float
    state: dict[str, Any] | None


def random_states() -> dict[str, Any]:
    """Every random generator a training step may draw from: the CPU's and each GPU's (dropout on a GPU draws
    from the GPU's own), so a resumed run draws what an uninterrupted one would have."""
    import torch

    states = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    if hasattr(torch, "mps") and torch.backends.mps.is_available():
        states["mps_rng"] = torch.mps.get_rng_state()
    return states


def restore_random_states(state: dict[str, Any]) -> None:
    """Set the generators :func:`random_states` saved (a device this machine lacks is passed over)."""
    import torch

    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "mps_rng" in state and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps_rng"])


class TrainingLoop:
    """Runs a :class:`Task` under a :class:`TrainingConfig`, checkpointing into ``folder``."""

    def __init__(self, task: Task, config: TrainingConfig, folder: str | Path, run_hash: str, *,
                 total_steps: int | None = None, desc: str = "Training") -> None:
        import torch

        self.task, self.config, self.desc = task, config, desc
        self.total = config.steps if total_steps is None else total_steps
        self.optimizer = torch.optim.AdamW(task.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        self.checkpoints = CheckpointStore(folder, run_hash)
        self.step, self.log, self.best, self.stale = 0, [], None, 0
        self.seconds, self.first_step = 0.0, 0
        self.last_state: dict[str, Any] | None = None

    # -- selection -------------------------------------------------------------------------------------------
    def _better(self, value: float) -> bool:
        if self.best is None or not math.isfinite(self.best.value):
            return math.isfinite(value)
        return value > self.best.value if self.task.higher_is_better else value < self.best.value

    def _record(self, values: dict[str, float]) -> None:
        """Note a held-out evaluation: a new best keeps its weights (when ``keep`` is best)."""
        value = values.get(self.task.selection)
        if value is None:
            return
        if self._better(value):
            state = self.task.trained_state() if self.config.keep == "best" else None
            self.best, self.stale = Selected(self.step, float(value), state), 0
        else:
            self.stale += 1

    def stopped_early(self) -> bool:
        return self.config.patience is not None and self.stale >= self.config.patience

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self) -> None:

        best = dataclasses.asdict(self.best) if self.best is not None else None
        self.checkpoints.save(self.step, {
            "trainable": self.task.trained_state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), **random_states(), "log": self.log,
            "best": best, "stale": self.stale})

    def resume(self) -> bool:

        state = self.checkpoints.latest()
        if state is None:
            return False
        self.task.load_trained_state(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_random_states(state)
        self.step, self.log, self.stale = state["step"], state["log"], state.get("stale", 0)
        self.best = Selected(**state["best"]) if state.get("best") else None
        return True

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end (or until stopped early); the task ends with the kept weights. Returns a summary."""
        from tqdm.auto import tqdm

        if not self.resume():
            values = self.task.evaluate()
            self.log.append({"step": 0, **values})
            self._record(values)
        started, self.first_step = time.perf_counter(), self.step
        with tqdm(total=self.total, initial=self.step, desc=self.desc, unit="step",
                  disable=not self.config.progress) as bar:
            while self.step < self.total and not self.stopped_early():
                entry = self._train_step()
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                bar.update(1)
                if self.step % self.config.checkpoint_every == 0 and self.step < self.total:
                    self.save()
        self.seconds = time.perf_counter() - started
        if self.config.keep == "best" and self.best is not None and self.best.state is not None:
            self.last_state = self.task.trained_state()      # where training went, beside what selection kept
            self.task.load_trained_state(self.best.state)
        return self.summary()

    def _train_step(self) -> dict[str, Any]:
        import torch

        terms: dict[str, float] = {}
        accum = self.config.grad_accum
        for micro in range(accum):
            batch = self.task.loss(self.step * accum + micro)
            (batch["loss"] / accum).backward()
            for name, value in batch.items():
                terms[name] = terms.get(name, 0.0) + float(value.detach()) / accum
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.task.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step()
        self.step += 1
        entry = {"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms}
        if self.step % self.config.eval_every == 0 or self.step == self.total:
            values = self.task.evaluate()
            entry.update(values)
            self._record(values)
        self.log.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        """Steps run, the kept step and its held-out value, throughput of this session."""
        items = (self.step - self.first_step) * self.config.batch_size * self.config.grad_accum
        kept = self.best.step if self.config.keep == "best" and self.best is not None else self.step
        return {"steps": self.step, "kept_step": kept, "selection": self.task.selection,
                "best_step": self.best.step if self.best else None,
                "best_value": self.best.value if self.best else None,
                "stopped_early": self.stopped_early() and self.step < self.total,
                "train_seconds": self.seconds, "items_per_s": items / self.seconds if self.seconds else None}

    def finish_checkpoints(self) -> None:
        """Remove the checkpoints once the final model is written (nothing is left to resume)."""
        import shutil

        shutil.rmtree(self.checkpoints.folder, ignore_errors=True)


def write_log(folder: Path, log: list[dict[str, Any]], **extra: Any) -> list[Path]:
    """``log.json`` (the one log format) and, when matplotlib is installed, ``loss_curves.png``; without it the
    run still finishes and says in one line which plot it skipped."""
    import json

    from ._io import atomic_open
    from .plotting import plot_curves

    with atomic_open(folder / "log.json") as handle:
        json.dump({**extra, "log": log}, handle, indent=1)
    written = [folder / "log.json"]
    plot = plot_curves(log, folder / "loss_curves.png")
    return written + ([plot] if plot is not None else [])
