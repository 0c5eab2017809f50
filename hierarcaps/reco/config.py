"""What a fusion training run is: its settings, each with its range, and their defaults.

Defaults follow what is known of RECO; what is not known (k, heads, temperature, schedule) is an option. The
hold-out that selects and decides (``holdout``) defaults to whole concepts: the learned fusion must earn its
place on concepts it never trained on, because that is what a memory is for. What ``auto`` trains (``learned``)
is the vote: on concepts absent from training it was the one learned fusion to beat the best training-free option
(``benchmarks/results/reco_recipes_fresh.md``); ``fusion="transformer"`` trains and keeps RECO's own.
"""

from __future__ import annotations

import dataclasses

from ..configs import check_fields
from ..errors import DataError
from ..fields import bounded
from ..training import TrainingConfig
from .fusion import KINDS, LEARNED_KINDS, STARTS

SIDES = ("both", "image", "text")
OBJECTIVES = ("vocabulary", "in-batch", "supervised")
HOLDOUTS = ("concept", "group", "class")


@dataclasses.dataclass
class RecoConfig(TrainingConfig):
    """A fusion training run; defaults follow what is known of RECO, unknowns are options."""

    memory: str = ""
    out: str = ""
    base: str = ""                 # the frozen encoder's spec, recorded for `reco:` loading
    k: int = bounded(16, low=1, high=4096)
    fusion: str = bounded("auto", choices=("auto", *KINDS))   # auto: learned only where it beats training-free
    learned: str = bounded("vote", choices=LEARNED_KINDS)   # what auto trains and weighs (reco_recipes_fresh.md)
    heads: int = bounded(8, low=1, high=256)
    ff_mult: int = bounded(4, low=1, high=64)     # the transformer's / MLP's hidden width, in multiples of dim
    start: str = bounded("best", choices=("best", *STARTS))   # best: as the best training-free option, per side
    residual: bool = True
    sides: str = bounded("both", choices=SIDES)
    fuse: str = bounded("cross", choices=("cross", "same"))   # "cross" (RECO) or "same" (uni-modal ablation)
    cross_modal_search: bool = False
    duplicate_threshold: float | None = bounded(None, low=-1.0, high=2.0)   # training only; off: own group only
    objective: str = bounded("vocabulary", choices=OBJECTIVES)
    neighbour_dropout: float = bounded(0.0, low=0.0, high=0.95)   # training: share of neighbours not read
    memory_noise: float = bounded(0.0, low=0.0, high=1.0)         # training: share swapped for random memory rows
    holdout: str = bounded("concept", choices=HOLDOUTS)
    concepts: int | None = bounded(None, low=2, high=1 << 20)    # clusters standing for concepts (no labels)
    confidence: float = bounded(0.95, low=0.5, high=0.999)     # of the learned-minus-free interval auto needs
    vocabulary_limit: int = bounded(8192, low=2, high=1 << 24)    # sampled per step beyond this many texts
    temperature: float = bounded(0.07, low=0.0, high=100.0, open_low=True)
    steps: int | None = bounded(1000, low=0, high=10**8)
    batch_size: int = bounded(256, low=2, high=1 << 20)
    lr: float = bounded(1e-4, low=0.0, high=1.0, open_low=True)
    eval_every: int = bounded(50, low=1, high=10**8)
    val_fraction: float = bounded(0.2, low=0.0, high=0.5)
    keep: str = bounded("best", choices=("last", "best"))
    patience: int | None = bounded(6, low=1, high=10**6)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("memory", "out"):
            if not getattr(self, name):
                raise DataError("required", field=name)
        if not self.residual and self.learned_kind() == "vote":
            raise DataError("the vote fusion has no update to keep without the residual", field="residual")

    def run_hash(self) -> str:
        from ..checkpoints import run_hash

        return run_hash(self, ignore=("progress", "out"))

    def learned_kind(self) -> str:
        return self.learned if self.fusion == "auto" else self.fusion
