"""Training the fusion modules with the encoder frozen, all embeddings precomputed, and the model selected and
decided on concepts it never trained on.

Each training pair (image q, text t) gets neighbours from the memory once, up front (batched and resumable,
on an engine): texts paired with q's nearest memory images for the image side, images paired with t's nearest
memory texts for the text side. Every memory row of the pair's own group (its image) is excluded, and, where
a threshold is given, near-duplicates: otherwise a pair retrieves another caption of its own image, i.e. the
answer. At inference nothing is excluded (evaluation items are removed from the memory when it is built).

The held-out parts (``holdouts``): every ``eval_every`` steps the refined ``select`` queries are scored by top-1
accuracy among their part's distinct answers and every training answer (every copy of a text the same answer).
The training answers are there as distractors: in use a query ranks among many classes, not the few of a
held-out part (where every option sits near ceiling), and a fusion that memorised the training answers pulls
unseen queries to them, which only this shows. The best evaluation's weights are kept and a run stops after
``patience`` evaluations without improvement. Before training, the training-free options are scored on
``select`` and the learned fusion starts as the best of them, side by side (``start`` "best"), so step 0 equals
what it must beat. At the end ``selection.decide`` compares the kept fusion with that option on the untouched
``decide`` part.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_open
from ..errors import DataError
from ..outputs import Journal, claim_folder, folder_lock, recover
from ..training import TrainingLoop, write_log
from .config import RecoConfig
from .fusion import FusionConfig, build_fusion
from .holdouts import Splits, concept_splits, simple_splits
from .memory import Memory
from .neighbours import neighbour_rows
from .objectives import Pairs, Vocabulary, contrastive, multi_positive
from .saved import INFO_FILE, WEIGHTS_FILE
from .selection import SELECTION, Option, best_free, decide, free_options

MODEL_KIND = "reco model"
STAGING = ".staging"
PARTS = ("select", "decide", "in_distribution")


def splits_of(config: RecoConfig, pairs: Pairs) -> Splits:
    """The training pairs' parts under ``config.holdout`` (see ``holdouts``); mean fusion, which has nothing to
    select or decide, holds nothing out."""
    if config.learned_kind() == "mean":
        return simple_splits(pairs.groups, 0.0, config.seed)
    if config.holdout == "concept":
        return concept_splits(pairs.text, pairs.groups, pairs.labels, config.val_fraction, config.seed,
                              config.concepts)
    if config.holdout == "class" and pairs.labels is None:
        raise DataError("holding out classes needs a label column in the training pairs", field="holdout")
    split_by = pairs.labels if config.holdout == "class" else pairs.groups
    return simple_splits(split_by, config.val_fraction, config.seed)


def starts_for(best: str, sides: list[str]) -> dict[str, str]:
    """Each refined side's start that makes a learned fusion equal the training-free option ``best`` at step 0:
    mean fusion on the sides it refines, the query itself (no change) on the others."""
    refined = set(free_options(sides)[best].sides)
    return {side: "mean" if side in refined else "query" for side in sides}


class RecoTrainer:
    """Trains fusion modules on pairs against a memory; a :class:`hierarcaps.training.Task`."""

    higher_is_better = True
    selection = SELECTION

    def __init__(self, config: RecoConfig, pairs: Pairs, *, engine: Any = None) -> None:
        import torch

        self.config, self.out, self.pairs = config, claim_folder(config.out, MODEL_KIND), pairs
        self.memory = Memory(config.memory)
        if config.k >= len(self.memory):
            raise DataError(f"k={config.k} neighbours from a memory of {len(self.memory)} items (a query's own item "
                            "is left out in training); lower k", field="k")
        if config.objective == "supervised" and (pairs.labels is None or pairs.label_vectors is None):
            raise DataError("the supervised objective needs class labels for the pairs", field="objective")
        torch.manual_seed(config.seed)
        self.splits = splits_of(config, pairs)
        self.train_rows = self.splits.train
        self.image = torch.tensor(np.asarray(pairs.image), dtype=torch.float32)   # a copy: memory arrays are mmapped
        self.text = torch.tensor(np.asarray(pairs.text), dtype=torch.float32)
        self.keys = pairs.labels if config.objective == "supervised" else pairs.text_keys()
        self.pair_group_codes = np.array([self.memory.code_of.get(str(g), -1) for g in pairs.groups])
        self.neighbour_rows = {side: self._neighbour_rows(side, engine) for side in self.refined_sides()}
        self.vocabulary = self._vocabulary(self.train_rows, engine)
        self.answer_sets = {part: self._vocabulary(np.concatenate([getattr(self.splits, part), self.train_rows]),
                                                   engine) for part in PARTS}
        dim = self.image.shape[1]
        self.mean_modules = {side: build_fusion(FusionConfig(kind="mean", dim=dim)) for side in self.refined_sides()}
        self.free = free_options(self.refined_sides())
        self.free_select = {name: self.evaluate(self.option_modules(option)).get(SELECTION)
                            for name, option in self.free.items()}
        self.best_free = best_free({k: v for k, v in self.free_select.items() if v is not None}) \
            if len(self.splits.select) else "mean"
        self.starts = starts_for(self.best_free, self.refined_sides()) if config.start == "best" else \
            dict.fromkeys(self.refined_sides(), config.start)
        self.fusion_config = FusionConfig(kind=config.learned_kind(), dim=dim, heads=config.heads,
                                          ff_mult=config.ff_mult, residual=config.residual)
        self.modules = torch.nn.ModuleDict({side: build_fusion(dataclasses.replace(self.fusion_config, start=start))
                                            for side, start in self.starts.items()})
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / config.temperature))))
        self.loop = TrainingLoop(self, config, self.out, config.run_hash(), desc="Training fusion")

    # -- data --------------------------------------------------------------------------------------------------
    def refined_sides(self) -> list[str]:
        return ["image", "text"] if self.config.sides == "both" else [self.config.sides]

    def _neighbour_rows(self, side: str, engine: Any) -> np.ndarray:
        queries = (self.image if side == "image" else self.text).numpy()
        return neighbour_rows(self.memory, queries, side, self.config.k, self.pairs.groups, self.out / "neighbours",
                              engine=engine, cross_modal_search=self.config.cross_modal_search,
                              duplicate_threshold=self.config.duplicate_threshold, progress=self.config.progress)

    def _vocabulary(self, rows: np.ndarray, engine: Any) -> Vocabulary:
        """The answers of these rows: distinct texts (their first pair's text and neighbours), or class names
        (their embeddings, with neighbours searched for them)."""
        if self.config.objective != "supervised":
            return Vocabulary(self.keys, self.text.numpy(), rows)
        names = sorted({self.keys[r] for r in rows})
        vectors = np.stack([self.pairs.label_vectors[name] for name in names]).astype(np.float32) if names else \
            np.zeros((0, self.text.shape[1]), dtype=np.float32)
        vocabulary = Vocabulary(names, vectors, np.arange(len(names)))
        if "text" in self.config.sides or self.config.sides == "both":
            vocabulary.neighbours = neighbour_rows(
                self.memory, vectors, "text", self.config.k, None, self.out / "neighbours" / f"labels-{len(rows)}",
                engine=engine, cross_modal_search=self.config.cross_modal_search)
        return vocabulary

    def _neighbours(self, side: str, rows: np.ndarray, table: np.ndarray | None = None, step: int | None = None
                    ) -> tuple[Any, Any]:
        """(vectors (B, k, d), present mask or None) of the neighbours fused for pairs ``rows``; in training
        (``step`` given) perturbed as ``memory_noise`` and ``neighbour_dropout`` ask."""
        import torch

        fused = ("text" if side == "image" else "image") if self.config.fuse == "cross" else side
        found = (self.neighbour_rows[side] if table is None else table)[rows]
        present = None
        if step is not None and (self.config.memory_noise or self.config.neighbour_dropout):
            found, present = self.perturbed(found, rows if table is None else None, side, step)
        return torch.from_numpy(np.asarray(self.memory.vectors[fused])[found]), present

    def perturbed(self, found: np.ndarray, rows: np.ndarray | None, side: str, step: int) -> tuple[np.ndarray, Any]:
        """Training neighbours made harder, the same for a step on any resume: a ``memory_noise`` share swapped
        for random memory rows (never of the pair's own group), a ``neighbour_dropout`` share masked out (the
        nearest is always read)."""
        import torch

        rng = np.random.default_rng([self.config.seed, step, 0 if side == "image" else 1])
        found = found.copy()
        swap = rng.random(found.shape) < self.config.memory_noise
        random_rows = rng.integers(len(self.memory), size=found.shape)
        if rows is not None:
            swap &= self.memory.group_codes[random_rows] != self.pair_group_codes[rows][:, None]
        found[swap] = random_rows[swap]
        if not self.config.neighbour_dropout:
            return found, None
        present = rng.random(found.shape) >= self.config.neighbour_dropout
        present[:, 0] = True
        return found, torch.from_numpy(present)

    def refine(self, side: str, rows: np.ndarray, modules: Any = None, step: int | None = None) -> Any:
        """Refined (or, on a side without a module, original) vectors of pairs ``rows`` on ``side``; ``step``:
        a training step's (perturbed) neighbours."""
        modules = self.modules if modules is None else modules
        vectors = (self.image if side == "image" else self.text)[rows]
        return modules[side](vectors, *self._neighbours(side, rows, step=step)) if side in modules else vectors

    def answers(self, vocabulary: Vocabulary, entries: np.ndarray, modules: Any = None, step: int | None = None
                ) -> Any:
        """The vectors the image side is scored against: the vocabulary's texts (or class names), refined on the
        text side where it has a module."""
        import torch

        modules = self.modules if modules is None else modules
        if self.config.objective != "supervised":
            return self.refine("text", vocabulary.rows[entries], modules, step)
        vectors = torch.from_numpy(vocabulary.vectors[entries])
        if "text" not in modules:
            return vectors
        return modules["text"](vectors, *self._neighbours("text", entries, vocabulary.neighbours, step))

    def option_modules(self, option: Option) -> dict[str, Any]:
        """The modules an option refines with: none (the frozen base), mean fusion, or the trained ones."""
        if option.kind == "none":
            return {}
        source = self.mean_modules if option.kind == "mean" else self.modules
        return {side: source[side] for side in option.sides}

    # -- the task ----------------------------------------------------------------------------------------------
    def parameters(self) -> list[Any]:
        return [*self.modules.parameters(), self.logit_scale]

    def trained_state(self) -> dict[str, Any]:
        return {**{k: v.detach().clone() for k, v in self.modules.state_dict().items()},
                "logit_scale": self.logit_scale.detach().clone()}

    def load_trained_state(self, state: dict[str, Any]) -> None:
        import torch

        self.modules.load_state_dict({k: v for k, v in state.items() if k != "logit_scale"})
        with torch.no_grad():
            self.logit_scale.copy_(state["logit_scale"])

    def after_step(self) -> None:
        import torch

        with torch.no_grad():
            self.logit_scale.clamp_(0, float(np.log(100)))

    def batch(self, micro_batch: int) -> np.ndarray:
        from ..training import batch_rows

        return self.train_rows[next(batch_rows(len(self.train_rows), self.config.batch_size, self.config.seed,
                                               micro_batch))]

    def loss(self, micro_batch: int) -> dict[str, Any]:
        rows = self.batch(micro_batch)
        if self.config.objective == "in-batch":
            return self.in_batch_loss(rows, micro_batch)
        return self.vocabulary_loss(rows, micro_batch)

    def in_batch_loss(self, rows: np.ndarray, micro_batch: int) -> dict[str, Any]:
        """RECO's loss: refined image with refined text, and each refined side with the original other side."""
        r, s = self.refine("image", rows, step=micro_batch), self.refine("text", rows, step=micro_batch)
        terms = {}
        if self.config.sides == "both":
            terms["refined_refined"] = contrastive(r, s, self.logit_scale)
        if "image" in self.modules:
            terms["refined_image_text"] = contrastive(r, self.text[rows], self.logit_scale)
        if "text" in self.modules:
            terms["image_refined_text"] = contrastive(self.image[rows], s, self.logit_scale)
        terms["loss"] = sum(terms.values())
        return terms

    def vocabulary_loss(self, rows: np.ndarray, micro_batch: int) -> dict[str, Any]:
        """Image side against every distinct answer (sampled past ``vocabulary_limit``, the batch's answers
        always in); text side against the batch's images with every image of the same text a positive."""
        import torch

        targets = self.vocabulary.targets(self.keys, rows)
        entries = np.arange(len(self.vocabulary.keys))
        if len(entries) > self.config.vocabulary_limit:
            rng = np.random.default_rng([self.config.seed, micro_batch, 1])
            others = rng.choice(len(entries), self.config.vocabulary_limit, replace=False)
            entries = np.unique(np.concatenate([targets, others]))
        position = {entry: i for i, entry in enumerate(entries)}
        scale = self.logit_scale.exp()
        r = self.refine("image", rows, step=micro_batch)
        logits = scale * r @ self.answers(self.vocabulary, entries, step=micro_batch).T
        terms = {"image_vocabulary": torch.nn.functional.cross_entropy(
            logits, torch.tensor([position[t] for t in targets]))}
        if "text" in self.modules:
            keys = np.array([self.keys[row] for row in rows], dtype=object)
            same = torch.from_numpy(keys[:, None] == keys[None, :])
            terms["text_images"] = multi_positive(scale * self.refine("text", rows, step=micro_batch) @ r.T, same)
        terms["loss"] = sum(terms.values())
        return terms

    def correct(self, modules: Any = None, part: str = "select") -> np.ndarray:
        """Whether each query of a held-out part is answered right (top-1 among the part's and the training
        pairs' distinct answers, every copy of a text the same answer), with the given modules (default: the
        trained ones)."""
        import torch

        rows, vocabulary = getattr(self.splits, part), self.answer_sets[part]
        if len(rows) == 0:
            return np.zeros(0, dtype=bool)
        with torch.no_grad():
            queries = self.refine("image", rows, modules)
            answers = self.answers(vocabulary, np.arange(len(vocabulary.keys)), modules)
            predicted = torch.argmax(queries @ answers.T, dim=1).numpy()
        return predicted == vocabulary.targets(self.keys, rows)

    def evaluate(self, modules: Any = None) -> dict[str, float]:
        """Accuracy on the ``select`` part (what early stopping and the kept step follow)."""
        found = self.correct(modules, "select")
        return {SELECTION: float(found.mean())} if len(found) else {}

    # -- the run --------------------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train (or resume), decide the fusion, write the model folder under its lock; returns it."""
        with folder_lock(self.out, what=f"the RECO model {self.out}"):
            recover(self.out)
            if self.config.learned_kind() == "mean" or self.config.steps == 0:
                summary = {"steps": 0, "kept_step": 0, "train_seconds": 0.0}
                self.loop.log = [{"step": 0, **self.evaluate()}]
            else:
                summary = self.loop.run()
            return self.finish(summary)

    def part_correct(self, modules: Any) -> dict[str, np.ndarray]:
        """Per-query correctness on each held-out part."""
        return {part: self.correct(modules, part) for part in PARTS}

    def last_step_modules(self) -> Any:
        """A copy of the modules with the last training step's weights (the kept ones stay in place)."""
        import copy

        modules = copy.deepcopy(self.modules)
        modules.load_state_dict({k: v for k, v in self.loop.last_state.items() if k != "logit_scale"})
        return modules

    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The decision (``selection.decide``) and every option's accuracy on every part."""
        learned = Option(self.config.learned_kind(), tuple(self.refined_sides()))
        options = {**self.free, **({"learned": learned} if learned.kind != "mean" else {})}
        correct = {name: self.part_correct(self.option_modules(option)) for name, option in options.items()}
        if self.loop.last_state is not None:           # where training ended, beside the step selection kept
            correct["learned_last_step"] = self.part_correct(self.last_step_modules())
        scores = {name: {part: float(found.mean()) if len(found) else None for part, found in parts.items()}
                  for name, parts in correct.items()}
        select = {k: v for k, v in self.free_select.items() if v is not None}
        on_decide = {name: correct[name]["decide"] for name in options}
        decided = decide(self.config.fusion, learned, self.free, select, on_decide, self.config.confidence,
                         summary.get("kept_step"), self.config.holdout)
        return {**decided, "scores": scores, "starts": self.starts, "concepts": self.splits.concepts,
                "holdout": self.config.holdout,
                "rows": {part: len(getattr(self.splits, part)) for part in ("train", *PARTS)}}

    def finish(self, summary: dict[str, Any]) -> Path:
        from safetensors.torch import save_file

        selection = self.record(summary)
        learned = selection["used"] not in ("mean", "none")
        sides = selection["used_sides"]
        staging = self.out / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if learned:
            save_file({f"{side}.{name}": tensor.contiguous() for side in sides
                       for name, tensor in self.modules[side].state_dict().items()}, staging / WEIGHTS_FILE)
        kind = selection["used"] if selection["used"] != "none" else "mean"
        memory = os.path.relpath(Path(self.config.memory).resolve(), self.out.resolve())
        info = {"base": self.config.base, "memory": memory, "memory_content_hash": self.memory.content_hash(),
                "fusion": dataclasses.asdict(dataclasses.replace(self.fusion_config, kind=kind)),
                "starts": {side: self.starts[side] for side in sides} if learned else {},
                "sides": sides, "selection": selection, "config": dataclasses.asdict(self.config),
                "steps": summary["steps"], "train_seconds": summary.get("train_seconds"),
                "run_hash": self.config.run_hash()}
        with atomic_open(staging / INFO_FILE) as handle:
            json.dump(info, handle, indent=2)
        weights_step = ("rename", f"{STAGING}/{WEIGHTS_FILE}", WEIGHTS_FILE) if learned else ("remove", WEIGHTS_FILE)
        steps = [weights_step, ("rename", f"{STAGING}/{INFO_FILE}", INFO_FILE), ("remove", STAGING)]
        Journal(self.out, "final write of the RECO model", steps).run()
        write_log(self.out, self.loop.log, summary=summary, selection=selection)
        self.loop.finish_checkpoints()
        return self.out
