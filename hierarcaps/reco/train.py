"""Training the fusion modules with the encoder frozen, all embeddings precomputed, and the model selected on
the task it will be judged by.

Each training pair (image q, text t) gets neighbours from the memory once, up front (batched and resumable,
on an engine): texts paired with q's nearest memory images for the image side, images paired with t's nearest
memory texts for the text side. Every memory row of the pair's own group (its image) is excluded, and, where
a threshold is given, near-duplicates: otherwise a pair retrieves another caption of its own image, i.e. the
answer. At inference nothing is excluded (evaluation items are removed from the memory when it is built).

Objectives (``objective``):
- ``vocabulary`` (default): a refined image is scored against every distinct training text (identical texts
  are one entry, so copies of a caption never act as each other's negatives); a refined text against the
  batch's images, all images of the same text counting as positives.
- ``in-batch``: RECO's symmetric contrastive loss within a batch (refined image with refined text, each refined
  side with the original other side); copies of a text in a batch count as negatives, as in the paper.
- ``supervised``: like ``vocabulary``, over class names (``Pairs.labels``, embedded as ``label_vectors``).

Selection: whole groups are held out (``holdout="class"``: whole classes, for the zero-shot setting); every
``eval_every`` steps the refined held-out queries are scored by top-1 accuracy among the distinct held-out texts
(or classes), counting every copy of a text as the same answer. The best evaluation's weights are kept, a run
stops after ``patience`` evaluations without improvement, and parameter-free mean fusion is scored on the same
split, on the refined sides and (when both are refined) on the query side alone. A learned fusion starts as
mean fusion exactly, so it can only move away from it on evidence; with ``fusion="auto"`` the saved model uses
the learned fusion only if it beat every training-free fusion on validation, and otherwise the best of those.
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
from ..configs import check_fields, setting
from ..errors import DataError, ModelSpecError
from ..models.folders import read_json_object
from ..outputs import Journal, claim_folder, folder_lock, recover
from ..training import TrainingConfig, TrainingLoop, holdout, write_log
from .fusion import KINDS, STARTS, FusionConfig, build_fusion
from .memory import Memory
from .neighbours import neighbour_rows

SIDES = ("both", "image", "text")
OBJECTIVES = ("vocabulary", "in-batch", "supervised")
SELECTION = "val_accuracy"
MODEL_KIND = "reco model"
INFO_FILE = "reco.json"
WEIGHTS_FILE = "fusion.safetensors"
STAGING = ".staging"


@dataclasses.dataclass
class RecoConfig(TrainingConfig):
    """A fusion training run; defaults follow what is known of RECO, unknowns are options."""

    memory: str = ""
    out: str = ""
    base: str = ""                 # the frozen encoder's spec, recorded for `reco:` loading
    k: int = setting(16, low=1, high=4096)
    fusion: str = setting("auto", choices=("auto", *KINDS))   # auto: the best on validation
    heads: int = setting(8, low=1, high=256)
    start: str = setting("mean", choices=STARTS)
    residual: bool = True
    sides: str = setting("both", choices=SIDES)
    fuse: str = setting("cross", choices=("cross", "same"))   # "cross" (RECO) or "same" (uni-modal ablation)
    cross_modal_search: bool = False
    duplicate_threshold: float | None = setting(None, low=-1.0, high=2.0)   # training only; off: own group only
    objective: str = setting("vocabulary", choices=OBJECTIVES)
    holdout: str = setting("group", choices=("group", "class"))
    vocabulary_limit: int = setting(8192, low=2, high=1 << 24)    # sampled per step beyond this many texts
    temperature: float = setting(0.07, low=0.0, high=100.0, open_low=True)
    steps: int | None = setting(1000, low=0, high=10**8)
    batch_size: int = setting(256, low=2, high=1 << 20)
    lr: float = setting(1e-4, low=0.0, high=1.0, open_low=True)
    eval_every: int = setting(50, low=1, high=10**8)
    keep: str = setting("best", choices=("last", "best"))
    patience: int | None = setting(6, low=1, high=10**6)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("memory", "out"):
            if not getattr(self, name):
                raise DataError("required", field=name)

    def run_hash(self) -> str:
        from ..checkpoints import run_hash

        return run_hash(self, ignore=("progress", "out"))

    def learned_kind(self) -> str:
        return "transformer" if self.fusion == "auto" else self.fusion


@dataclasses.dataclass
class Pairs:
    """Training pairs: image and text vectors (n, d), each pair's group (its image: never its own neighbour),
    each text's identity (``keys``: copies of a text share a key; default: the vector itself), and optionally a
    class label per pair with the embedding of every class name (the supervised objective)."""

    image: np.ndarray
    text: np.ndarray
    groups: list[str]
    keys: list[str] | None = None
    labels: list[str] | None = None
    label_vectors: dict[str, np.ndarray] | None = None

    def text_keys(self) -> list[str]:
        if self.keys is not None:
            return list(self.keys)
        rounded = np.round(np.asarray(self.text, dtype=np.float32), 5)
        return [row.tobytes().hex() for row in rounded]


def contrastive(a: Any, b: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE between row-aligned unit vectors (in-batch negatives)."""
    import torch

    logits = logit_scale.exp() * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def multi_positive(logits: Any, positive: Any) -> Any:
    """Mean over rows of -log(sum of softmax over the positive columns): every copy of the answer is the answer."""
    import torch

    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), dim=1)).mean()


class Vocabulary:
    """The distinct answers of a set of rows (texts by key, or class labels), one vector and one row each."""

    neighbours: np.ndarray | None = None       # memory rows of each class name (supervised, text side refined)

    def __init__(self, keys: list[str], vectors: np.ndarray, rows: np.ndarray) -> None:
        order: dict[str, int] = {}
        for row in rows:
            order.setdefault(keys[row], row)
        self.keys = list(order)
        self.index = {key: i for i, key in enumerate(self.keys)}
        self.rows = np.array(list(order.values()), dtype=np.int64)       # a representative row per answer
        self.vectors = vectors

    def targets(self, keys: list[str], rows: np.ndarray) -> np.ndarray:
        return np.array([self.index[keys[r]] for r in rows])


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
        split_by = pairs.labels if config.holdout == "class" and pairs.labels is not None else pairs.groups
        self.train_rows, self.val = holdout(split_by, config.val_fraction, config.seed)
        self.image = torch.tensor(np.asarray(pairs.image), dtype=torch.float32)   # a copy: memory arrays are mmapped
        self.text = torch.tensor(np.asarray(pairs.text), dtype=torch.float32)
        self.fusion_config = FusionConfig(kind=config.learned_kind(), dim=self.image.shape[1], heads=config.heads,
                                          residual=config.residual, start=config.start)
        self.modules = torch.nn.ModuleDict({side: build_fusion(self.fusion_config) for side in self.refined_sides()})
        self.mean_modules = {side: build_fusion(FusionConfig(kind="mean", dim=self.image.shape[1]))
                             for side in self.refined_sides()}
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / config.temperature))))
        self.keys = pairs.labels if config.objective == "supervised" else pairs.text_keys()
        self.neighbour_rows = {side: self._neighbour_rows(side, engine) for side in self.refined_sides()}
        self.vocabulary = self._vocabulary(self.train_rows, engine)
        self.val_vocabulary = self._vocabulary(self.val, engine)
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
        vectors = np.stack([self.pairs.label_vectors[name] for name in names]).astype(np.float32)
        vocabulary = Vocabulary(names, vectors, np.arange(len(names)))
        if "text" in self.modules:
            vocabulary.neighbours = neighbour_rows(
                self.memory, vectors, "text", self.config.k, None, self.out / "neighbours" / f"labels-{len(rows)}",
                engine=engine, cross_modal_search=self.config.cross_modal_search)
        return vocabulary

    def _neighbours(self, side: str, rows: np.ndarray, table: np.ndarray | None = None) -> Any:
        import torch

        fused = ("text" if side == "image" else "image") if self.config.fuse == "cross" else side
        found = (self.neighbour_rows[side] if table is None else table)[rows]
        return torch.from_numpy(np.asarray(self.memory.vectors[fused])[found])

    def refine(self, side: str, rows: np.ndarray, modules: Any = None) -> Any:
        """Refined (or, on a side without a module, original) vectors of pairs ``rows`` on ``side``."""
        modules = self.modules if modules is None else modules
        vectors = (self.image if side == "image" else self.text)[rows]
        return modules[side](vectors, self._neighbours(side, rows)) if side in modules else vectors

    def answers(self, vocabulary: Vocabulary, entries: np.ndarray, modules: Any = None) -> Any:
        """The vectors the image side is scored against: the vocabulary's texts (or class names), refined on the
        text side where it has a module."""
        import torch

        modules = self.modules if modules is None else modules
        if self.config.objective != "supervised":
            return self.refine("text", vocabulary.rows[entries], modules)
        vectors = torch.from_numpy(vocabulary.vectors[entries])
        if "text" not in modules:
            return vectors
        return modules["text"](vectors, self._neighbours("text", entries, vocabulary.neighbours))

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
            return self.in_batch_loss(rows)
        return self.vocabulary_loss(rows, micro_batch)

    def in_batch_loss(self, rows: np.ndarray) -> dict[str, Any]:
        """RECO's loss: refined image with refined text, and each refined side with the original other side."""
        r, s = self.refine("image", rows), self.refine("text", rows)
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
        r = self.refine("image", rows)
        logits = scale * r @ self.answers(self.vocabulary, entries).T
        terms = {"image_vocabulary": torch.nn.functional.cross_entropy(
            logits, torch.tensor([position[t] for t in targets]))}
        if "text" in self.modules:
            keys = np.array([self.keys[row] for row in rows], dtype=object)
            same = torch.from_numpy(keys[:, None] == keys[None, :])
            terms["text_images"] = multi_positive(scale * self.refine("text", rows) @ r.T, same)
        terms["loss"] = sum(terms.values())
        return terms

    def evaluate(self, modules: Any = None) -> dict[str, float]:
        """Top-1 accuracy of the held-out queries among the distinct held-out answers (every copy of a text is
        the same answer), with the given modules (default: the trained ones)."""
        import torch

        if len(self.val) == 0:
            return {}
        with torch.no_grad():
            queries = self.refine("image", self.val, modules)
            answers = self.answers(self.val_vocabulary, np.arange(len(self.val_vocabulary.keys)), modules)
            predicted = torch.argmax(queries @ answers.T, dim=1).numpy()
        truth = self.val_vocabulary.targets(self.keys, self.val)
        return {SELECTION: float((predicted == truth).mean())}

    # -- the run --------------------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train (or resume), select the fusion, write the model folder under its lock; returns it."""
        with folder_lock(self.out, what=f"the RECO model {self.out}"):
            recover(self.out)
            free = self.training_free_scores()
            if self.config.learned_kind() == "mean" or self.config.steps == 0:
                summary = {"steps": 0, "kept_step": 0, "best_value": free["mean"], "train_seconds": 0.0}
                self.loop.log = [{"step": 0, **({SELECTION: free["mean"]} if free["mean"] is not None else {})}]
            else:
                summary = self.loop.run()
            return self.finish(summary, free)

    def training_free_scores(self) -> dict[str, float | None]:
        """Validation scores of what needs no training: the frozen base, mean fusion on the refined sides and,
        when both sides are refined, mean fusion on the query (image) side alone, which was the best
        training-free fusion wherever training data were scarce (README, "Which fusion to use")."""
        scores = {"base": self.evaluate({}).get(SELECTION), "mean": self.evaluate(self.mean_modules).get(SELECTION)}
        if len(self.mean_modules) > 1:
            scores["mean_query_side"] = self.evaluate({"image": self.mean_modules["image"]}).get(SELECTION)
        return scores

    def choice(self, summary: dict[str, Any], free: dict[str, float | None]) -> dict[str, Any]:
        """Which fusion the model uses, on which sides, and why. ``auto`` takes the best on validation, ties
        going to the option with fewer parameters: mean fusion on the refined sides, then on the query side
        alone, then the learned fusion."""
        kind, sides = self.config.learned_kind(), self.refined_sides()
        learned = summary.get("best_value") if kind != "mean" else None
        options = [("mean", sides, free["mean"]), ("mean", ["image"], free.get("mean_query_side")),
                   (kind, sides, learned)]
        options = [option for option in options if option[2] is not None]
        if self.config.fusion == "auto" and options:
            used, used_sides, _ = max(options, key=lambda option: option[2])    # the first of equal scores
        else:
            used, used_sides = ("mean" if self.config.fusion == "auto" else kind), sides
        why = self.reason(options, free["base"], summary.get("kept_step"), fusion_label(used, used_sides))
        return {"metric": SELECTION, "mean": free["mean"], "mean_query_side": free.get("mean_query_side"),
                "base": free["base"], "learned": learned, "learned_kind": kind, "kept_step": summary.get("kept_step"),
                "used": used, "used_sides": used_sides, "why": why}

    def reason(self, options: list[tuple[str, list[str], float]], base: float | None, kept_step: int | None,
               used: str) -> str:
        """The selection's ``why``: every score compared on validation, and what the model uses."""
        if self.config.fusion == "mean":
            return "mean fusion was asked for (no parameters)"
        if not options:
            return f"{used}: nothing was held out to compare on"
        held = "classes" if self.config.holdout == "class" else "groups"
        scores = [f"learned {kind} (step {kept_step}) {value:.4f}" if kind != "mean" else
                  f"{fusion_label(kind, sides)} {value:.4f}" for kind, sides, value in options]
        why = f"on held-out {held} ({SELECTION}): {', '.join(scores)}, frozen base {base:.4f}; using {used}"
        if base is not None and base > max(value for *_, value in options):
            why += " (the frozen base beat every fusion: the memory may not cover this task)"
        return why

    def finish(self, summary: dict[str, Any], free: dict[str, float | None]) -> Path:
        from safetensors.torch import save_file

        selection = self.choice(summary, free)
        used = dataclasses.replace(self.fusion_config, kind=selection["used"])
        staging = self.out / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if used.kind != "mean":
            save_file({f"{side}.{name}": tensor.contiguous() for side, module in self.modules.items()
                       for name, tensor in module.state_dict().items()}, staging / WEIGHTS_FILE)
        memory = os.path.relpath(Path(self.config.memory).resolve(), self.out.resolve())
        info = {"base": self.config.base, "memory": memory, "memory_content_hash": self.memory.content_hash(),
                "fusion": dataclasses.asdict(used), "sides": selection["used_sides"], "selection": selection,
                "config": dataclasses.asdict(self.config), "steps": summary["steps"],
                "train_seconds": summary.get("train_seconds"), "run_hash": self.config.run_hash()}
        with atomic_open(staging / INFO_FILE) as handle:
            json.dump(info, handle, indent=2)
        weights_step = ("rename", f"{STAGING}/{WEIGHTS_FILE}", WEIGHTS_FILE) if used.kind != "mean" \
            else ("remove", WEIGHTS_FILE)
        steps = [weights_step, ("rename", f"{STAGING}/{INFO_FILE}", INFO_FILE), ("remove", STAGING)]
        Journal(self.out, "final write of the RECO model", steps).run()
        write_log(self.out, self.loop.log, summary=summary, selection=selection)
        self.loop.finish_checkpoints()
        return self.out


def fusion_label(kind: str, sides: list[str]) -> str:
    """'mean fusion on both sides', 'learned transformer on the query side', ... for the selection's reasons."""
    where = "both sides" if len(sides) == 2 else ("the query side" if sides == ["image"] else f"the {sides[0]} side")
    return f"{'mean fusion' if kind == 'mean' else 'learned ' + kind} on {where}"


def load_fusion(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(info, {side: module}) of a trained RECO folder, modules in eval mode; a folder that is not one, or whose
    files disagree, is one line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / INFO_FILE
    if not path.exists():
        raise ModelSpecError(f"{folder} is not a trained RECO model (no {INFO_FILE})")
    info = read_json_object(path, what="RECO model description")
    problem = reco_info_problem(info)
    if problem:
        raise ModelSpecError(f"{path}: {problem}")
    config = FusionConfig(**{"start": "query", **info["fusion"]})      # older models started as the query
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = load_file(weights_path) if config.kind != "mean" else {}
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
    if not isinstance(fusion, dict) or not set(fusion) <= fields or fusion.get("kind") not in KINDS \
            or fusion.get("start", "query") not in STARTS:
        return f"fusion must be an object with {', '.join(sorted(fields))} (kind one of {', '.join(KINDS)})"
    sides = info.get("sides")
    if not isinstance(sides, list) or not set(sides) <= {"image", "text"}:
        return "sides must be a list of image and text"
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("k"), int) or config["k"] < 1:
        return "config must hold k, the number of neighbours fused"
    return None
