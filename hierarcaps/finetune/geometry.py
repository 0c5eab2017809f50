"""Radial Embedding geometry as pure torch functions: root, radius, exterior angle, entailment cones.

Embeddings are L2-normalised; the root is the normalised embedding of the empty text. Generic texts sit
close to the root; a more specific text lies further out along the ray from the root through its parent.
"""

from __future__ import annotations

from typing import Any

Tensor = Any  # torch.Tensor; torch is imported by the caller


def radius(e: Tensor, root: Tensor) -> Tensor:
    """d_r(e) = ||e - r||: the genericity of a text (smaller = more generic)."""
    return (e - root).norm(dim=-1)


def exterior_angle(e: Tensor, e_child: Tensor, root: Tensor, *, clip: float = 0.0) -> Tensor:
    """Ξ_r(e, e') = angle between a = e - r and b - a = e' - e, with cos clipped to [-1 + clip, 1 - clip].

    Small when e' lies further out along the ray from r through e. ``clip`` > 0 keeps arccos's gradient
    finite at exactly aligned vectors during training.
    """
    import torch

    a = e - root
    step = e_child - e
    cos = (a * step).sum(-1) / (a.norm(dim=-1) * step.norm(dim=-1)).clamp_min(1e-12)
    return torch.arccos(cos.clamp(-1 + clip, 1 - clip))


def cone_half_aperture(e: Tensor, root: Tensor, k: float = 0.1) -> Tensor:
    """ψ(e) = arcsin(min(1, K / ||e - r||)): cones narrow as texts get more specific (Ganea et al. 2018)."""
    import torch

    return torch.arcsin((k / radius(e, root).clamp_min(1e-12)).clamp(max=1.0))
