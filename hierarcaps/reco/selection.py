"""Which fusion a trained RECO model uses, on which sides, and why, decided on held-out data.

The options that need no training are the frozen base, mean fusion on the refined sides and, when both sides
are refined, mean fusion on the query (image) side alone; the best of them on the ``select`` hold-out is the one
the learned fusion must beat (and the one it starts as). ``auto`` keeps the learned fusion only where, on the
untouched ``decide`` hold-out, the paired bootstrap interval of its accuracy minus that option's lies wholly
above zero; otherwise it keeps that option and says why. The choice of the kept step on ``select`` cannot flatter
the learned fusion on ``decide``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SELECTION = "val_accuracy"
FREE_OPTIONS = ("base", "mean", "mean_query_side")


@dataclasses.dataclass(frozen=True)
class Option:
    """A fusion a model can use: its kind (``mean``, ``none`` for the frozen base, or a learned kind) and the
    sides it refines."""

    kind: str
    sides: tuple[str, ...]

    def label(self) -> str:
        return fusion_label(self.kind, list(self.sides))


def fusion_label(kind: str, sides: list[str]) -> str:
    """'mean fusion on both sides', 'learned transformer on the query side', ... for reasons and tables."""
    if kind == "none" or not sides:
        return "the frozen base"
    where = "both sides" if len(sides) == 2 else ("the query side" if sides == ["image"] else f"the {sides[0]} side")
    return f"{'mean fusion' if kind == 'mean' else 'learned ' + kind} on {where}"


def free_options(sides: list[str]) -> dict[str, Option]:
    """The training-free options for a run that refines ``sides``."""
    options = {"base": Option("none", ()), "mean": Option("mean", tuple(sides))}
    if len(sides) > 1:
        options["mean_query_side"] = Option("mean", ("image",))
    return options


def best_free(scores: dict[str, float]) -> str:
    """The training-free option with the best ``select`` accuracy, ties going to the one listed first in
    ``FREE_OPTIONS`` (fewest moving parts)."""
    return max((name for name in FREE_OPTIONS if name in scores), key=lambda name: (scores[name],
                                                                                    -FREE_OPTIONS.index(name)))


def paired_interval(learned: np.ndarray, other: np.ndarray, confidence: float, seed: int = 0
                    ) -> tuple[float, float, float]:
    """Mean of learned minus other per-query correctness, and its paired percentile bootstrap interval."""
    from ..metrics.bootstrap import bootstrap_cis

    difference = learned.astype(np.float64) - other.astype(np.float64)
    if len(difference) == 0:
        return 0.0, 0.0, 0.0
    low, high = bootstrap_cis(difference[:, None], resamples=1000, seed=seed, level=confidence)[0]
    return float(difference.mean()), float(low), float(high)


HELD_OUT = {"concept": "held-out concepts never trained on", "class": "held-out classes never trained on",
            "group": "held-out groups of concepts also trained on"}
"""What the decide hold-out is, per ``holdout`` setting (said in the record of why)."""


def decide(fusion: str, learned: Option, free: dict[str, Option], select: dict[str, float],
           decide_correct: dict[str, np.ndarray], confidence: float, kept_step: int | None,
           holdout: str = "concept") -> dict[str, Any]:
    """The model's fusion, its sides and the record of why (``select``: accuracy per option on the select
    hold-out; ``decide_correct``: per-query correctness per option on the decide hold-out, held out as
    ``holdout`` says)."""
    baseline = best_free(select) if select else "mean"
    scores = {name: float(np.mean(c)) if len(c) else None for name, c in decide_correct.items()}
    record: dict[str, Any] = {"metric": SELECTION, "select": select, "decide": scores, "kept_step": kept_step,
                              "best_free": baseline, "learned_kind": learned.kind}
    if fusion == "mean":
        used, why = free["mean"], "mean fusion was asked for (no parameters)"
    elif fusion != "auto":
        used, why = learned, f"the learned {learned.kind} was asked for"
    elif "learned" not in decide_correct or not len(decide_correct["learned"]):
        used, why = free[baseline], f"{free[baseline].label()}: nothing was held out to decide on"
    else:
        mean, low, high = paired_interval(decide_correct["learned"], decide_correct[baseline], confidence)
        record["learned_minus_best_free"] = {"mean": mean, "interval": [low, high], "confidence": confidence}
        won = low > 0
        used = learned if won else free[baseline]
        why = (f"on {HELD_OUT[holdout]} ({SELECTION}), learned {learned.kind} (step {kept_step}) "
               f"minus {free[baseline].label()}: {mean:+.4f} [{low:+.4f}, {high:+.4f}] at {confidence:.0%}; "
               + ("the learned fusion wins" if won else f"no clear win: using {free[baseline].label()}"))
    record.update(used=used.kind, used_sides=list(used.sides), why=why)
    return record
