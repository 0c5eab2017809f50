"""The RE objective (as restated in the protocol notes) and an entailment-cone baseline.

Inputs are normalised text embeddings from the model being trained: ``pos`` and ``neg`` (B, K, d) for
positive and negative chains, the root (d,) recomputed at this step, and ``pos_orig``/``neg_orig`` from a
frozen copy of the starting model for the pullback term.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..geometry import cone_half_aperture, exterior_angle

Tensor = Any
ANGLE_CLIP = 1e-7


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the terms; the RE defaults are pullback 10, RE 1, hard 1."""

    pullback: float = 10.0
    main: float = 1.0
    hard: float = 1.0


@dataclasses.dataclass(frozen=True)
class ConeSettings:
    """Entailment-cone baseline: aperture constant K and negative margin m (radians)."""

    k: float = 0.1
    margin: float = 0.1


def pullback(current: Tensor, original: Tensor) -> Tensor:
    """(1 - mean cos(e, e_orig)) / 2: keeps the fine-tuned embeddings near the starting model's."""
    return (1 - (current * original).sum(-1).mean()) / 2


def chain_angles(pos: Tensor, neg: Tensor, root: Tensor) -> tuple[Tensor, Tensor]:
    """P_k = Ξ(p_k, p_k+1) and Ξ(p_k, n_k+1) for k = 1..K-1, each (K-1, B). Negative tier 1 is unused."""
    parents, children, negatives = pos[:, :-1], pos[:, 1:], neg[:, 1:]
    positive = exterior_angle(parents, children, root, clip=ANGLE_CLIP).T
    negative = exterior_angle(parents, negatives, root, clip=ANGLE_CLIP).T
    return positive, negative


def re_loss(pos: Tensor, neg: Tensor, root: Tensor, pos_orig: Tensor, neg_orig: Tensor,
            weights: LossWeights = LossWeights()) -> dict[str, Tensor]:
    """Radial Embedding loss: mean(P) + mean(N) with N = -Ξ(p_k, n_k+1), the hard term, and pullback."""
    import torch

    p_angles, n_angles = chain_angles(pos, neg, root)
    p, n = p_angles.reshape(-1), -n_angles.reshape(-1)
    main = p.mean() + n.mean()
    both = p + n
    hard = both[torch.argmax(p)] + both[torch.argmax(n)]
    pb = pullback(torch.cat([pos, neg]).reshape(-1, pos.shape[-1]),
                  torch.cat([pos_orig, neg_orig]).reshape(-1, pos.shape[-1]))
    total = weights.pullback * pb + weights.main * main + weights.hard * hard
    return {"loss": total, "pullback": pb, "re": main, "hard": hard}


def cone_loss(pos: Tensor, neg: Tensor, root: Tensor, pos_orig: Tensor, neg_orig: Tensor,
              weights: LossWeights = LossWeights(hard=0.0), cone: ConeSettings = ConeSettings()) -> dict[str, Tensor]:
    """Entailment cones, Euclidean form around the root: children inside the parent's cone, negatives outside.

    Positive pairs cost max(0, Ξ(p_k, p_k+1) - ψ(p_k)); negative pairs max(0, m + ψ(p_k) - Ξ(p_k, n_k+1)).
    The hard term (the worst pair's cost) is available but off by default.
    """
    import torch

    p_angles, n_angles = chain_angles(pos, neg, root)
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
