"""What a fusion trains on: the training pairs, the distinct answers they are scored against, and the losses.

Objectives (``RecoConfig.objective``):
- ``vocabulary`` (default): a refined image is scored against every distinct training text (identical texts
  are one entry, so copies of a caption never act as each other's negatives); a refined text against the
  batch's images, all images of the same text counting as positives.
- ``in-batch``: RECO's symmetric contrastive loss within a batch (refined image with refined text, each refined
  side with the original other side); copies of a text in a batch count as negatives, as in the paper.
- ``supervised``: like ``vocabulary``, over class names (``Pairs.labels``, embedded as ``label_vectors``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Pairs:
    """Training pairs: image and text vectors (n, d), each pair's group (its image: never its own neighbour),
    each text's identity (``keys``: copies of a text share a key; default: the vector itself), and optionally a
    class label per pair with the embedding of every class name (the supervised objective)."""

    image: np.ndarray
    text: np.ndarray
    groups: list[str]
    keys: list[str] | None = None
    labels: list[str] | None = None
    label_vectors: dict[str, np.ndarray] | None = None

    def text_keys(self) -> list[str]:
        if self.keys is not None:
            return list(self.keys)
        rounded = np.round(np.asarray(self.text, dtype=np.float32), 5)
        return [row.tobytes().hex() for row in rounded]


class Vocabulary:
    """The distinct answers of a set of rows (texts by key, or class labels), one vector and one row each."""

    neighbours: np.ndarray | None = None       # memory rows of each class name (supervised, text side refined)

    def __init__(self, keys: list[str], vectors: np.ndarray, rows: np.ndarray) -> None:
        order: dict[str, int] = {}
        for row in rows:
            order.setdefault(keys[row], row)
        self.keys = list(order)
        self.index = {key: i for i, key in enumerate(self.keys)}
        self.rows = np.array(list(order.values()), dtype=np.int64)       # a representative row per answer
        self.vectors = vectors

    def targets(self, keys: list[str], rows: np.ndarray) -> np.ndarray:
        return np.array([self.index[keys[r]] for r in rows])


def contrastive(a: Any, b: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE between row-aligned unit vectors (in-batch negatives)."""
    import torch

    logits = logit_scale.exp() * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def multi_positive(logits: Any, positive: Any) -> Any:
    """Mean over rows of -log(sum of softmax over the positive columns): every copy of the answer is the answer."""
    import torch

    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), dim=1)).mean()
