"""Fusion modules: a query embedding and its k retrieved embeddings in, one refined unit vector out.

- ``mean``: no parameters: the normalised mean of the query and its neighbours. The training-free baseline
  every learned fusion must beat to earn its parameters.
- ``transformer`` (RECO): one transformer encoder layer over [query, n_1..n_k] with a learned type embedding
  (query vs retrieved); the query position gives the update. About 3.16M parameters at width 512.
- ``mlp``: the control of (about) equal size on [query; mean of neighbours], trained the same way.
- ``vote``: a soft nearest-neighbour vote with two scalars per side: each neighbour weighs in by how much it
  agrees with the other neighbours (mean cosine, sharpened by a learned ``sharpness``), so the majority's
  reading outweighs the odd one out. The fewest-parameter learned fusion: at sharpness 0 it is mean fusion.

The trained kinds add exactly one update to a base and normalise. With ``start="mean"`` (the default) the base
is mean fusion moved towards the query by a learned scalar ``mix`` (``mean + mix * (query - mean)``), and
``mix`` and the layers that write the update start at zero: before training a learned fusion gives mean
fusion's vectors exactly, and training moves away from them only on evidence, towards reading each neighbour
or back towards the query. ``start="query"`` makes the query itself the base (the identity start).
``residual=False`` keeps the update alone (an ablation). (``vote`` has no update: with the query start its
``mix`` starts at 1, the query itself.)

Every fusion takes an optional ``present`` mask (B, k) of the neighbours it may read: training drops
neighbours with it (``neighbour_dropout``); at inference all are read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("transformer", "mlp", "vote", "mean")
LEARNED_KINDS = ("transformer", "mlp", "vote")
STARTS = ("mean", "query")
TYPE_EMBEDDING_STD = 0.02
VOTE_SCALE = 100.0
"""The vote's sharpness is ``VOTE_SCALE`` times its parameter: cosine agreements differ by tenths, so a useful
sharpness is tens, which an optimiser's steps of about ``lr`` reach in hundreds of steps only at this scale."""


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    kind: str = "transformer"
    dim: int = 512
    heads: int = 8
    ff_mult: int = 4
    residual: bool = True
    start: str = "mean"


def build_fusion(config: FusionConfig) -> Any:
    """A torch module ``(query (B, d), neighbours (B, k, d)) -> (B, d)`` unit vectors."""
    import torch
    from torch import nn

    if config.kind not in KINDS or config.start not in STARTS:
        raise ValueError(f"fusion kind {config.kind!r} / start {config.start!r}; kinds: {', '.join(KINDS)}, "
                         f"starts: {', '.join(STARTS)}")

    def zero(*layers: nn.Linear) -> None:
        if not config.residual:        # without the residual a zero update would be no embedding at all
            return
        for layer in layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def weights(neighbours: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """Each neighbour's weight in the mean: 1 where it is read, 0 where it was dropped."""
        if present is None:
            return neighbours.new_ones(neighbours.shape[:2])
        return present.to(neighbours.dtype)

    def mean(query: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The query and its neighbours averaged, neighbour i counting ``weight[:, i]`` times."""
        summed = query + (weight[..., None] * neighbours).sum(dim=1)
        return summed / (1 + weight.sum(dim=1, keepdim=True))

    def refined(module: nn.Module, query: torch.Tensor, neighbours: torch.Tensor, update: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
        if not config.residual:
            return nn.functional.normalize(update, dim=-1)
        if config.start == "query" and config.kind != "vote":
            return nn.functional.normalize(query + update, dim=-1)
        average = mean(query, neighbours, weight)  # mean fusion, moved towards the query as ``mix`` learns
        return nn.functional.normalize(average + module.mix * (query - average) + update, dim=-1)

    def mixing(module: nn.Module) -> None:
        """A learned scalar: how far the base moves from mean fusion towards the query (0: mean fusion; the
        vote's query start: 1, the query)."""
        module.mix = nn.Parameter(torch.tensor(1.0 if config.kind == "vote" and config.start == "query" else 0.0))

    class TransformerFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.type_embedding = nn.Embedding(2, config.dim)
            nn.init.normal_(self.type_embedding.weight, std=TYPE_EMBEDDING_STD)
            self.layer = nn.TransformerEncoderLayer(config.dim, config.heads, config.ff_mult * config.dim,
                                                    dropout=0.0, batch_first=True, norm_first=True)
            zero(self.layer.self_attn.out_proj, self.layer.linear2)
            mixing(self)

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor, present: torch.Tensor | None = None
                    ) -> torch.Tensor:
            tokens = torch.cat([query[:, None], neighbours], dim=1)
            types = torch.ones(tokens.shape[1], dtype=torch.long, device=tokens.device)
            types[0] = 0
            tokens = tokens + self.type_embedding(types)
            ignored = None if present is None else torch.cat([present.new_zeros((len(present), 1)), ~present], 1)
            # a pre-norm layer returns x + attention + MLP; keep only the update, so the one residual is below
            update = self.layer(tokens, src_key_padding_mask=ignored)[:, 0] - tokens[:, 0]
            return refined(self, query, neighbours, update, weights(neighbours, present))

    class MLPFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hidden = config.ff_mult * config.dim
            self.net = nn.Sequential(nn.LayerNorm(2 * config.dim), nn.Linear(2 * config.dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, config.dim))
            zero(self.net[-1])
            mixing(self)

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor, present: torch.Tensor | None = None
                    ) -> torch.Tensor:
            weight = weights(neighbours, present)
            read = (weight[..., None] * neighbours).sum(dim=1) / weight.sum(dim=1, keepdim=True).clamp(min=1)
            return refined(self, query, neighbours, self.net(torch.cat([query, read], dim=-1)), weight)

    class VoteFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sharpness = nn.Parameter(torch.zeros(()))
            mixing(self)

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor, present: torch.Tensor | None = None
                    ) -> torch.Tensor:
            weight = weights(neighbours, present)
            agreement = neighbours @ neighbours.transpose(1, 2)
            agreement = (agreement * weight[:, None]).sum(-1) - agreement.diagonal(dim1=1, dim2=2) * weight
            agreement = agreement / (weight.sum(dim=1, keepdim=True) - 1).clamp(min=1)
            logits = (VOTE_SCALE * self.sharpness * agreement).masked_fill(weight == 0, -torch.inf)
            votes = weight.sum(dim=1, keepdim=True) * torch.softmax(logits, dim=1)
            return refined(self, query, neighbours, torch.zeros_like(query), votes)

    class MeanFusion(nn.Module):
        def forward(self, query: torch.Tensor, neighbours: torch.Tensor, present: torch.Tensor | None = None
                    ) -> torch.Tensor:
            return nn.functional.normalize(mean(query, neighbours, weights(neighbours, present)), dim=-1)

    return {"transformer": TransformerFusion, "mlp": MLPFusion, "vote": VoteFusion, "mean": MeanFusion}[config.kind]()
