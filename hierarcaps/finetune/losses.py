"""The RE objective (as restated in the protocol notes) and an entailment-cone baseline.

Inputs are normalised text embeddings from the model being trained: ``pos`` and ``neg`` (B, K, d) for
positive and negative chains, the root (d,) recomputed at this step, and ``pos_orig``/``neg_orig`` from the
starting model's weights for the pullback term.

Negative pairing: the reference trainer pairs positive tier k with negative tier k (its contradicting
sibling, e.g. "motorcycle" / "cars") for k = 1..K-1, and never uses negative tier K. That is the default
(``sibling``); ``child`` (positive tier k with negative tier k+1) is kept only as an ablation: it lowers
d_corr when trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .geometry import cone_half_aperture, exterior_angle

Tensor = Any
ANGLE_CLIP = 1e-7


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the terms; the RE defaults are pullback 10, RE 1, hard 1."""

    pullback: float = 10.0
    main: float = 1.0
    hard: float = 1.0


NEGATIVE_PAIRINGS = ("sibling", "child")


@dataclasses.dataclass(frozen=True)
class ConeSettings:
    """Entailment-cone baseline: aperture constant K and negative margin m (radians)."""

    k: float = 0.1
    margin: float = 0.1


def pullback(current: Tensor, original: Tensor) -> Tensor:
    """(1 - mean cos(e, e_orig)) / 2: keeps the fine-tuned embeddings near the starting model's."""
    return (1 - (current * original).sum(-1).mean()) / 2


def chain_angles(pos: Tensor, neg: Tensor, root: Tensor, pairing: str = "sibling") -> tuple[Tensor, Tensor]:
    """P_k = Ξ(p_k, p_k+1) and Ξ(p_k, n_k) for k = 1..K-1, each (K-1, B); ``child`` pairs n_k+1 instead."""
    if pairing not in NEGATIVE_PAIRINGS:
        raise ValueError(f"negative pairing must be one of {NEGATIVE_PAIRINGS}, not {pairing!r}")
    parents, children = pos[:, :-1], pos[:, 1:]
    negatives = neg[:, :-1] if pairing == "sibling" else neg[:, 1:]
    positive = exterior_angle(parents, children, root, clip=ANGLE_CLIP).T
    negative = exterior_angle(parents, negatives, root, clip=ANGLE_CLIP).T
    return positive, negative


def re_loss(pos: Tensor, neg: Tensor, root: Tensor, pos_orig: Tensor, neg_orig: Tensor,
            weights: LossWeights = LossWeights(), pairing: str = "sibling") -> dict[str, Tensor]:
    """Radial Embedding loss: mean(P) + mean(N) with N = -Ξ(p_k, n_k), the hard term, and pullback."""
    import torch

    p_angles, n_angles = chain_angles(pos, neg, root, pairing)
    p, n = p_angles.reshape(-1), -n_angles.reshape(-1)
    main = p.mean() + n.mean()
    both = p + n
    hard = both[torch.argmax(p)] + both[torch.argmax(n)]
    pb = pullback(torch.cat([pos, neg]).reshape(-1, pos.shape[-1]),
                  torch.cat([pos_orig, neg_orig]).reshape(-1, pos.shape[-1]))
    total = weights.pullback * pb + weights.main * main + weights.hard * hard
    return {"loss": total, "pullback": pb, "re": main, "hard": hard}


def cone_loss(pos: Tensor, neg: Tensor, root: Tensor, pos_orig: Tensor, neg_orig: Tensor,
              weights: LossWeights = LossWeights(hard=0.0), pairing: str = "sibling",
              cone: ConeSettings = ConeSettings()) -> dict[str, Tensor]:
    """Entailment cones, Euclidean form around the root: children inside the parent's cone, negatives outside.

    Positive pairs cost max(0, Ξ(p_k, p_k+1) - ψ(p_k)); negative pairs max(0, m + ψ(p_k) - Ξ(p_k, n_k)), the
    same pairs as the RE objective. The hard term (the worst pair's cost) is available but off by default.
    """
    import torch

    p_angles, n_angles = chain_angles(pos, neg, root, pairing)
    aperture = cone_half_aperture(pos[:, :-1], root, cone.k).T
    p = torch.relu(p_angles - aperture).reshape(-1)
    n = torch.relu(cone.margin + aperture - n_angles).reshape(-1)
    main = p.mean() + n.mean()
    hard = p.max() + n.max()
    pb = pullback(torch.cat([pos, neg]).reshape(-1, pos.shape[-1]),
                  torch.cat([pos_orig, neg_orig]).reshape(-1, pos.shape[-1]))
    total = weights.pullback * pb + weights.main * main + weights.hard * hard
    return {"loss": total, "pullback": pb, "cone": main, "hard": hard}


OBJECTIVES = {"re": re_loss, "cone": cone_loss}
