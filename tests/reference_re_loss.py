"""The reference trainer's per-batch objective, transcribed as a test oracle for `hierarcaps.finetune.losses`.

The reference embeds a batch of B items as one flat list laid out tier-major: [p1 of every item, p2 of every
item, ..., p4, n1, ..., n4] (8B texts), views it as 8 rows of B, and pairs rows (k, k+1) for the positive
angles and rows (k, k+4) for the negative ones, k = 0..2. The pullback compares every one of the 8B
embeddings with the starting model's. It shares no code with the package.
"""

from __future__ import annotations

import torch


def tier_major_texts(positives: list[list[str]], negatives: list[list[str]]) -> list[str]:
    """[p1 of every item, ..., p4 of every item, n1 ..., n4 ...]: the reference trainer's text order."""
    return [chain[k] for chains in (positives, negatives) for k in range(4) for chain in chains]


def reference_batch_loss(E: torch.Tensor, E_orig: torch.Tensor, root: torch.Tensor, lambda_p: float = 10.0,
                         lambda_e: float = 1.0, lambda_m: float = 1.0) -> dict[str, torch.Tensor]:
    """E, E_orig: (8B, d) normalised, tier-major; root: (d,) normalised. Returns the three logged values."""
    bsz = E.shape[0] // 8
    ploss = (1 - torch.einsum("bi,bi->b", E, E_orig).mean()) / 2
    rows = E.view(8, bsz, -1)

    def angle(i: int, j: int) -> torch.Tensor:
        a = rows[i] - root
        b = rows[j] - root - a
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        return cos.clip(-1.0, 1.0).acos()

    P = torch.stack([angle(i, i + 1) for i in range(3)])
    N = torch.stack([-angle(i, i + 4) for i in range(3)])
    eloss = P.mean() + N.mean()
    both = P.ravel() + N.ravel()
    mloss = both[P.ravel().argmax()] + both[N.ravel().argmax()]
    return {"ploss": ploss, "eloss": eloss, "mloss": mloss,
            "total": lambda_p * ploss + lambda_e * eloss + lambda_m * mloss}
