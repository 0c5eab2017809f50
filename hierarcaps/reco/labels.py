"""Zero-shot that is zero-shot: the labels of training pairs (and of a training memory) that name a scored class
in other words are found and left out.

A label is a near-duplicate of a scored class when their comparison keys agree once a plural ending is dropped
("fruits" and "fruit"), or when their embeddings' cosine is at least ``threshold`` ("transport" and
"transportation"). The threshold is part of the result a benchmark records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..textsafe import comparison_key

NEAR_DUPLICATE_COSINE = 0.85
"""The cosine at which two class names are one class (the packaged MiniLM: transport / transportation 0.89,
fruit / fruits 0.94; different classes stay below: cat / dog 0.66, vehicle / transportation 0.61)."""


def singular_key(label: str) -> str:
    """A label's comparison key with a final plural ending dropped from each word."""
    words = []
    for word in comparison_key(label).split():
        for ending in ("ies", "es", "s"):
            if len(word) > len(ending) + 2 and word.endswith(ending):
                word = word[:-len(ending)] + ("y" if ending == "ies" else "")
                break
        words.append(word)
    return " ".join(words)


def near_duplicates(labels: Sequence[str], scored: Sequence[str], vectors: Mapping[str, np.ndarray],
                    threshold: float = NEAR_DUPLICATE_COSINE) -> set[str]:
    """The labels (of ``labels``, scored classes included) that name a scored class: the same singular key, or
    embeddings at cosine ``threshold`` or more."""
    keys = {singular_key(name) for name in scored}
    candidates = sorted(set(labels))
    scored_matrix = np.stack([vectors[name] for name in scored]).astype(np.float64)
    scored_matrix /= np.linalg.norm(scored_matrix, axis=1, keepdims=True)
    found = set()
    for name in candidates:
        vector = np.asarray(vectors[name], dtype=np.float64)
        if singular_key(name) in keys or (scored_matrix @ (vector / np.linalg.norm(vector))).max() >= threshold:
            found.add(name)
    return found
