"""A direct, loop-per-image transcription of the hierarchy protocol as the protocol notes define it.

Used only as a test oracle: it shares no code with `hierarcaps.metrics`, so agreement between the two
is evidence that the vectorised implementation follows the definition.
"""

from __future__ import annotations

from itertools import groupby

import numpy as np
import torch
from scipy.stats import kendalltau


def order_aware(preds: list[str], chains: list[list[str]]) -> float:
    truth = {t for chain in chains for t in chain}
    indices = [next(chain.index(p) for chain in chains if p in chain) for p in preds if p in truth]
    if not indices:
        return 0.0
    indices = [k for k, _ in groupby(indices)]
    signs = np.diff(indices) > 0
    runs = [len(list(g)) + 1 for k, g in groupby(signs) if k]
    return (max(runs) if runs else 1) / 4


def reference_scores(texts: list[list[str]], text_emb: np.ndarray, root: np.ndarray, image_emb: np.ndarray,
                     row_image: list[int], steps: int = 50) -> dict[str, float]:
    E = torch.tensor(text_emb, dtype=torch.float64)
    V = torch.tensor(image_emb, dtype=torch.float64)
    r = torch.tensor(root, dtype=torch.float64)
    R = (E - r).norm(dim=-1)
    levels = np.linspace(R.min().item(), R.max().item(), steps)
    masks = [R <= level for level in levels]
    T = np.array(texts, dtype=object)
    precisions, recalls, r_os = [], [], []
    for image in range(len(V)):
        S = E @ V[image]
        preds: list[str] = []
        for mask in masks:
            t = T[mask.numpy()][S[mask].argmax().item()]
            if not preds or preds[-1] != t:
                preds.append(t)
        chains = [list(T[i]) for i, img in enumerate(row_image) if img == image]
        truth = {t for chain in chains for t in chain}
        predicted = set(preds)
        precisions.append(len(predicted & truth) / max(1, len(predicted)))
        recalls.append(sum(any(chain[k] in predicted for chain in chains) for k in range(4)) / 4)
        r_os.append(order_aware(preds, chains))
    ranks = R.argsort(dim=-1, stable=True)
    taus = [kendalltau(row.numpy(), [1, 2, 3, 4]).statistic for row in ranks]
    return {"precision": float(np.mean(precisions)), "recall": float(np.mean(recalls)),
            "d_corr": float(np.mean(taus)), "order_aware_recall": float(np.mean(r_os))}
