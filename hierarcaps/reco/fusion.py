"""Fusion modules: a query embedding and its k retrieved embeddings in, one refined unit vector out.

- ``transformer`` (RECO): one transformer encoder layer over [query, n_1..n_k] with a learned type
  embedding (query vs retrieved); the query position is the output. About 3.16M parameters at width 512.
- ``mlp``: the control of (about) equal size on [query; mean of neighbours], trained the same way.
- ``mean``: no parameters: the mean of the query and its neighbours.
The trained kinds add exactly one residual (query + update, ``residual=False``: the update alone) before
normalising, and with the residual they start as the identity: the type embedding is small (std 0.02, beside
unit-length tokens) and the layers that write the update start at zero, so before training every query keeps
its own embedding and training moves it only as far as the memory helps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("transformer", "mlp", "mean")
TYPE_EMBEDDING_STD = 0.02


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    kind: str = "transformer"
    dim: int = 512
    heads: int = 8
    ff_mult: int = 4
    residual: bool = True


def build_fusion(config: FusionConfig) -> Any:
    """A torch module ``(query (B, d), neighbours (B, k, d)) -> (B, d)`` unit vectors."""
    import torch
    from torch import nn

    def zero(*layers: nn.Linear) -> None:
        if not config.residual:        # without the residual a zero update would be no embedding at all
            return
        for layer in layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def refined(query: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(query + update if config.residual else update, dim=-1)

    class TransformerFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.type_embedding = nn.Embedding(2, config.dim)
            nn.init.normal_(self.type_embedding.weight, std=TYPE_EMBEDDING_STD)
            self.layer = nn.TransformerEncoderLayer(config.dim, config.heads, config.ff_mult * config.dim,
                                                    dropout=0.0, batch_first=True, norm_first=True)
            zero(self.layer.self_attn.out_proj, self.layer.linear2)

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            tokens = torch.cat([query[:, None], neighbours], dim=1)
            types = torch.ones(tokens.shape[1], dtype=torch.long, device=tokens.device)
            types[0] = 0
            tokens = tokens + self.type_embedding(types)
            # a pre-norm layer returns x + attention + MLP; keep only the update, so the one residual is below
            update = self.layer(tokens)[:, 0] - tokens[:, 0]
            return refined(query, update)

    class MLPFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hidden = config.ff_mult * config.dim
            self.net = nn.Sequential(nn.LayerNorm(2 * config.dim), nn.Linear(2 * config.dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, config.dim))
            zero(self.net[-1])

        def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            return refined(query, self.net(torch.cat([query, neighbours.mean(dim=1)], dim=-1)))

    class MeanFusion(nn.Module):
        def forward(self, query: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(torch.cat([query[:, None], neighbours], dim=1).mean(dim=1), dim=-1)

    modules = {"transformer": TransformerFusion, "mlp": MLPFusion, "mean": MeanFusion}
    if config.kind not in modules:
        raise ValueError(f"fusion kind {config.kind!r}; choose from {', '.join(KINDS)}")
    return modules[config.kind]()
