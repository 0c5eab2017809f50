"""Fusion modules: a query embedding and its k retrieved embeddings in, one refined unit vector out.

- ``mean``: no parameters: the normalised mean of the query and its neighbours. The training-free baseline
  every learned fusion must beat to earn its parameters.
- ``transformer`` (RECO): one transformer encoder layer over [query, n_1..n_k] with a learned type embedding
  (query vs retrieved); the query position gives the update. About 3.16M parameters at width 512.
- ``mlp``: the control of (about) equal size on [query; mean of neighbours], trained the same way.

The trained kinds add exactly one update to a base and normalise. With ``start="mean"`` (the default) the base
is mean fusion moved towards the query by a learned scalar ``mix`` (``mean + mix * (query - mean)``), and
``mix`` and the layers that write the update start at zero: before training a learned fusion gives mean
fusion's vectors exactly, and training moves away from them only on evidence, towards reading each neighbour
or back towards the query. ``start="query"`` makes the query itself the base (the identity start).
``residual=False`` keeps the update alone (an ablation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("transformer", "mlp", "mean")
STARTS = ("mean", "query")
TYPE_EMBEDDING_STD = 0.02


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

    def mean(query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        return torch.cat([query[:, None], neighbours], dim=1).mean(dim=1)

    def refined(module: nn.Module, query: torch.Tensor, neighbours: torch.Tensor, update: torch.Tensor
                ) -> torch.Tensor:
        if not config.residual:
            return nn.functional.normalize(update, dim=-1)
        if config.start == "query":
            return nn.functional.normalize(query + update, dim=-1)
        average = mean(query, neighbours)          # mean fusion, moved towards the query as ``mix`` learns
        return nn.functional.normalize(average + module.mix * (query - average) + update, dim=-1)

    def mixing(module: nn.Module) -> None:
        """A learned scalar, zero at the start: how far the base moves from mean fusion towards the query."""
        module.mix = nn.Parameter(torch.zeros(()))

    class TransformerFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.type_embedding = nn.Embedding(2, config.dim)
            nn.init.normal_(self.type_embedding.weight, std=TYPE_EMBEDDING_STD)
            self.layer = nn.TransformerEncoderLayer(config.dim, config.heads, config.ff_mult * config.dim,
                                                    dropout=0.0, batch_first=True, norm_first=True)
            zero(self.layer.self_attn.out_proj, self.layer.linear2)
            mixing(self)

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            tokens = torch.cat([query[:, None], neighbours], dim=1)
            types = torch.ones(tokens.shape[1], dtype=torch.long, device=tokens.device)
            types[0] = 0
            tokens = tokens + self.type_embedding(types)
            # a pre-norm layer returns x + attention + MLP; keep only the update, so the one residual is below
            update = self.layer(tokens)[:, 0] - tokens[:, 0]
            return refined(self, query, neighbours, update)

    class MLPFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hidden = config.ff_mult * config.dim
            self.net = nn.Sequential(nn.LayerNorm(2 * config.dim), nn.Linear(2 * config.dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, config.dim))
            zero(self.net[-1])
            mixing(self)

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            return refined(self, query, neighbours, self.net(torch.cat([query, neighbours.mean(dim=1)], dim=-1)))

    class MeanFusion(nn.Module):
        def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(mean(query, neighbours), dim=-1)

    return {"transformer": TransformerFusion, "mlp": MLPFusion, "mean": MeanFusion}[config.kind]()
