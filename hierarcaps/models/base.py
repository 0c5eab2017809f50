"""The Encoder seam: anything that maps texts (and optionally images) to L2-normalised vectors.

Geometry hooks default to the Radial Embedding view (root = embedding of the empty text, Euclidean
distance to it, cosine similarity); models with their own geometry override them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.hierarchy import DEFAULT_ROOT_TEXT, dot_similarity, radii
from .decoding import ImageBatches


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def source_name(source: str) -> str:
    """A model's name from where it was loaded: a local path gives its own folder or file name (results and
    boards never show an absolute path); a hub id stays as given."""
    path = Path(source).expanduser()
    return path.resolve().name if path.is_absolute() or path.exists() or source.startswith(".") else source


class Encoder:
    """Base class of every model adapter. Subclasses implement ``_embed_texts`` and, for image-text models,
    ``_embed_images``; they fill ``name``, ``revision`` and ``fingerprint()`` for metadata and caching."""

    name: str = "encoder"
    revision: str | None = None
    has_images: bool = False
    root_text: str = DEFAULT_ROOT_TEXT
    # seconds spent loading weights on first use (lazy encoders); reported apart from embedding time
    load_seconds: float = 0.0

    def encode_text(self, texts: Sequence[str], *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n, d) float32 unit vectors, in the order given."""
        return normalise(self._embed_texts(list(texts), batch_size=batch_size, progress=progress))

    def encode_image(self, images: Sequence[str | os.PathLike[str]] | ImageBatches, *, batch_size: int = 64,
                     workers: int = 1, progress: bool = False) -> np.ndarray:
        """(n, d) float32 unit vectors for image files (or decoding already under way), in the order given."""
        if not self.has_images:
            raise TypeError(f"{self.name} is a text-only model")
        images = images if isinstance(images, ImageBatches) else list(images)
        return normalise(self._embed_images(images, batch_size=batch_size, workers=workers, progress=progress))

    def root(self) -> np.ndarray:
        return self.encode_text([self.root_text])[0]

    def distance_to_root(self, text_emb: np.ndarray, root: np.ndarray) -> np.ndarray:
        """Genericity of each text (smaller = more generic); the protocol's radius."""
        return radii(text_emb, root)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) similarities the metrics rank by; the dot product (cosine) by default."""
        return dot_similarity(a, b)

    def has_own_geometry(self) -> bool:
        """Whether this model overrides the radius, the similarity or the root text."""
        cls = type(self)
        return (cls.distance_to_root is not Encoder.distance_to_root or cls.similarity is not Encoder.similarity
                or self.root_text != DEFAULT_ROOT_TEXT)

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        raise NotImplementedError

    def _embed_images(self, images: list[Any] | ImageBatches, *, batch_size: int, workers: int,
                      progress: bool) -> np.ndarray:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the weights (a hash), so caches and results never confuse two models."""
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        """What turns raw inputs into tensors (tokenizer, image transform): part of the cache key."""
        return {}

    def numerics(self) -> str:
        """The arithmetic that computes the embeddings: exact fp32, or e.g. bf16 autocast on a GPU."""
        return "fp32"

    def embedding_recipe(self) -> dict[str, Any]:
        """Everything besides the weights that decides the vectors: the cache key's model part."""
        return {**self.preprocessing(), "numerics": self.numerics()}

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "revision": self.revision, "fingerprint": self.fingerprint(),
                "parameters": self.parameter_count(), "dim": int(self.root().shape[0]),
                "modalities": ["text", "image"] if self.has_images else ["text"], "root_text": self.root_text,
                "own_geometry": self.has_own_geometry()}

    def parameter_count(self) -> int | None:
        return None
