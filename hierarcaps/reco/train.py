"""Training the fusion modules with the encoder frozen and all embeddings precomputed.

Each training pair (image q, text t) gets neighbours from the memory once, up front: texts paired with
q's nearest memory images for the image side, images paired with t's nearest memory texts for the text
side. Every memory row of the pair's group (its image) is excluded, and near-duplicates too: otherwise a
pair retrieves another caption of its own image, i.e. the answer. Validation pairs are whole groups held
out of training, and see the memory without their group. The pairs may be the memory's own or any others
(``--train-pairs``). The loss is a symmetric contrastive loss with a learnable temperature that aligns the
refined image with the refined text and each refined side with the original other side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open
from ..checkpoints import CheckpointStore, run_hash
from ..configs import check_fields, setting
from ..errors import ModelSpecError
from ..models.folders import read_json_object
from ..training_log import plot_curves
from .fusion import KINDS, FusionConfig, build_fusion
from .memory import Memory

SIDES = ("both", "image", "text")


@dataclasses.dataclass
class RecoConfig:
    """A fusion training run; defaults follow what is known of RECO, unknowns are options."""

    memory: str
    out: str
    base: str = ""                 # the frozen encoder's spec, recorded for `reco:` loading
    k: int = setting(16, low=1, high=4096)
    fusion: str = setting("transformer", choices=("transformer", "mlp", "mean"))
    heads: int = setting(8, low=1, high=256)
    residual: bool = True
    sides: str = setting("both", choices=SIDES)
    fuse: str = setting("cross", choices=("cross", "same"))   # "cross" (RECO) or "same" (uni-modal ablation)
    cross_modal_search: bool = False
    duplicate_threshold: float = setting(0.98, low=-1.0, high=2.0)
    lr: float = setting(1e-4, low=0.0, high=1.0, open_low=True)
    weight_decay: float = setting(0.01, low=0.0, high=100.0)
    batch_size: int = setting(256, low=2, high=1 << 20)
    steps: int = setting(1000, low=0, high=10**8)
    temperature: float = setting(0.07, low=0.0, high=100.0, open_low=True)
    val_fraction: float = setting(0.05, low=0.0, high=0.5)
    val_every: int = setting(100, low=1, high=10**8)
    checkpoint_every: int = setting(200, low=1, high=10**8)
    seed: int = setting(0, low=0, high=2**32 - 1)
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)

    def run_hash(self) -> str:
        return run_hash(self, ignore=("progress", "out"))


def contrastive(a: Any, b: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE between row-aligned unit vectors."""
    import torch

    logits = logit_scale.exp() * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def split_by_group(groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, training rows): whole groups held out, chosen by a seeded hash of the group."""
    import hashlib

    keys = sorted(set(groups))
    ranked = sorted(keys, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held = set(ranked[:round(len(keys) * fraction)])
    is_val = np.array([g in held for g in groups], dtype=bool)
    return np.flatnonzero(is_val), np.flatnonzero(~is_val)


class RecoTrainer:
    """Trains fusion modules on pairs (image, text, id) against a memory."""

    def __init__(self, config: RecoConfig, image: np.ndarray, text: np.ndarray, groups: Sequence[str]) -> None:
        import torch

        if config.sides not in SIDES:
            raise ValueError(f"sides must be one of {SIDES}")
        self.config, self.out = config, Path(config.out)
        self.memory = Memory(config.memory)
        torch.manual_seed(config.seed)
        self.val, self.train_rows = split_by_group(groups, config.val_fraction, config.seed)
        self.image = torch.tensor(np.asarray(image), dtype=torch.float32)   # a copy: memory arrays are mmapped
        self.text = torch.tensor(np.asarray(text), dtype=torch.float32)
        dim = self.image.shape[1]
        fusion = FusionConfig(kind=config.fusion, dim=dim, heads=config.heads, residual=config.residual)
        self.fusion_config = fusion
        self.modules = torch.nn.ModuleDict({side: build_fusion(fusion) for side in self.refined_sides()})
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / config.temperature))))
        self.neighbour_rows = {side: self._neighbour_rows(side, groups) for side in self.refined_sides()}
        params = [*self.modules.parameters(), self.logit_scale]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.checkpoints = CheckpointStore(self.out, config.run_hash())
        self.step, self.log = 0, []

    def refined_sides(self) -> list[str]:
        return ["image", "text"] if self.config.sides == "both" else [self.config.sides]

    def _neighbour_rows(self, side: str, groups: Sequence[str]) -> np.ndarray:
        queries = (self.image if side == "image" else self.text).numpy()
        _, rows = self.memory.search(queries, side, self.config.k, cross_modal_search=self.config.cross_modal_search,
                                     exclude_groups=groups, duplicate_threshold=self.config.duplicate_threshold)
        return rows

    def _neighbours(self, side: str, rows: np.ndarray) -> Any:
        import torch

        fused = ("text" if side == "image" else "image") if self.config.fuse == "cross" else side
        vectors = np.asarray(self.memory.vectors[fused])[self.neighbour_rows[side][rows]]
        return torch.from_numpy(vectors)

    def refine(self, rows: np.ndarray) -> tuple[Any, Any]:
        """(refined or original image, refined or original text) for training rows."""
        q, t = self.image[rows], self.text[rows]
        r = self.modules["image"](q, self._neighbours("image", rows)) if "image" in self.modules else q
        s = self.modules["text"](t, self._neighbours("text", rows)) if "text" in self.modules else t
        return r, s

    def loss(self, rows: np.ndarray) -> dict[str, Any]:
        r, s = self.refine(rows)
        q, t = self.image[rows], self.text[rows]
        terms = {}
        if self.config.sides == "both":
            terms["refined_refined"] = contrastive(r, s, self.logit_scale)
        if "image" in self.modules:
            terms["refined_image_text"] = contrastive(r, t, self.logit_scale)
        if "text" in self.modules:
            terms["image_refined_text"] = contrastive(q, s, self.logit_scale)
        terms["loss"] = sum(terms.values())
        return terms

    def validate(self) -> dict[str, float]:
        import torch

        if len(self.val) == 0:
            return {}
        with torch.no_grad():
            r, s = self.refine(self.val)
            hits = (torch.argmax(r @ s.T, dim=1) == torch.arange(len(self.val))).float().mean()
            return {"val_loss": float(self.loss(self.val)["loss"]), "val_i2t_R@1": float(hits)}

    def train(self) -> Path:
        import torch
        from tqdm.auto import tqdm

        state = self.checkpoints.latest()
        if state is not None:
            self.modules.load_state_dict(state["modules"])
            with torch.no_grad():
                self.logit_scale.copy_(state["logit_scale"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.log = state["step"], state["log"]
        else:
            self.log.append({"step": 0, **self.validate()})
        per_epoch = max(1, len(self.train_rows) // self.config.batch_size)
        bar = tqdm(total=self.config.steps, initial=self.step, desc="Training fusion", disable=not self.config.progress)
        started = time.perf_counter()
        while self.step < self.config.steps:
            epoch, position = divmod(self.step, per_epoch)
            order = np.random.default_rng([self.config.seed, epoch]).permutation(self.train_rows)
            rows = order[position * self.config.batch_size:(position + 1) * self.config.batch_size]
            terms = self.loss(rows)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            with torch.no_grad():
                self.logit_scale.clamp_(0, float(np.log(100)))
            self.step += 1
            entry = {"step": self.step, **{k: float(v.detach()) for k, v in terms.items()},
                     "temperature": float(1 / self.logit_scale.detach().exp())}
            if self.step % self.config.val_every == 0 or self.step == self.config.steps:
                entry.update(self.validate())
            self.log.append(entry)
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            bar.update(1)
            if self.step % self.config.checkpoint_every == 0 and self.step < self.config.steps:
                self.checkpoints.save(self.step, {"modules": self.modules.state_dict(),
                                                  "logit_scale": self.logit_scale.detach().clone(),
                                                  "optimizer": self.optimizer.state_dict(), "log": self.log})
        bar.close()
        return self.finish(time.perf_counter() - started)

    def finish(self, seconds: float) -> Path:
        from safetensors.torch import save_file

        self.out.mkdir(parents=True, exist_ok=True)
        state = {f"{side}.{name}": tensor.contiguous() for side, module in self.modules.items()
                 for name, tensor in module.state_dict().items()}
        if state:
            save_file(state, self.out / "fusion.safetensors")
        memory = os.path.relpath(Path(self.config.memory).resolve(), self.out.resolve())
        info = {"base": self.config.base, "memory": memory, "memory_content_hash": self.memory.content_hash(),
                "fusion": dataclasses.asdict(self.fusion_config), "sides": self.refined_sides(),
                "config": dataclasses.asdict(self.config), "steps": self.step, "train_seconds": seconds,
                "run_hash": self.config.run_hash()}
        with atomic_open(self.out / "reco.json") as handle:
            json.dump(info, handle, indent=2)
        with atomic_open(self.out / "log.json") as handle:
            json.dump(self.log, handle, indent=1)
        plot_curves(self.log, self.out / "loss_curves.png")
        return self.out


def load_fusion(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(info, {side: module}) of a trained RECO folder, modules in eval mode; a folder that is not one, or whose
    files disagree, is one line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / "reco.json"
    if not path.exists():
        raise ModelSpecError(f"{folder} is not a trained RECO model (no reco.json)")
    info = read_json_object(path, what="RECO model description")
    problem = reco_info_problem(info)
    if problem:
        raise ModelSpecError(f"{path}: {problem}")
    config = FusionConfig(**info["fusion"])
    weights_path = folder / "fusion.safetensors"
    try:
        weights = load_file(weights_path) if weights_path.exists() else {}
        modules = {}
        for side in info["sides"]:
            module = build_fusion(config)
            module.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"{side}.")})
            modules[side] = module.eval()
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ModelSpecError(f"{weights_path}: does not hold the fusion reco.json describes "
                             f"({' '.join(str(exc).split())[:160]})") from None
    return info, modules


def reco_info_problem(info: dict[str, Any]) -> str | None:
    """Why a reco.json cannot describe a model, or None."""
    fields = {f.name for f in dataclasses.fields(FusionConfig)}
    if not isinstance(info.get("base"), str) or not isinstance(info.get("memory"), str):
        return "needs the base encoder's spec and the memory's folder (base, memory)"
    fusion = info.get("fusion")
    if not isinstance(fusion, dict) or not set(fusion) <= fields or fusion.get("kind") not in KINDS:
        return f"fusion must be an object with {', '.join(sorted(fields))} (kind one of {', '.join(KINDS)})"
    sides = info.get("sides")
    if not isinstance(sides, list) or not set(sides) <= {"image", "text"}:
        return "sides must be a list of image and text"
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("k"), int) or config["k"] < 1:
        return "config must hold k, the number of neighbours fused"
    return None
