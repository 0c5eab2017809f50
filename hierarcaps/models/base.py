"""The Encoder seam: anything that maps texts (and optionally images) to L2-normalised vectors.

How a model's vectors are read is one object, its :class:`Geometry` (root text, distance to the root,
similarity), by default the Radial Embedding view (root = embedding of the empty text, Euclidean distance to
it, cosine similarity); a model with its own geometry overrides ``geometry()``. Whether a model embeds images
is inferred from its class (it implements ``_embed_images``), never declared beside it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.hierarchy import DEFAULT_ROOT_TEXT, dot_similarity, radii
from .image_batches import ImageBatches


def normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def source_name(source: str) -> str:
    """A model's name from where it was loaded: a local path gives its own folder or file name (results and
    boards never show an absolute path); a hub id stays as given."""
    path = Path(source).expanduser()
    return path.resolve().name if path.is_absolute() or path.exists() or source.startswith(".") else source


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a model's embeddings are read by the metrics: the root's text, each text's distance to the root (its
    genericity: smaller = more generic; the protocol's radius) and the similarity retrieval ranks by."""

    root_text: str = DEFAULT_ROOT_TEXT
    distance_to_root: Callable[[np.ndarray, np.ndarray], np.ndarray] = radii
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] = dot_similarity

    def is_default(self) -> bool:
        return self == DEFAULT_GEOMETRY


DEFAULT_GEOMETRY = Geometry()


class Encoder:
    """Base class of every model adapter. Subclasses implement ``_embed_texts`` and, for image-text models,
    ``_embed_images``; they fill ``name``, ``revision`` and ``fingerprint()`` for metadata and caching."""

    name: str = "encoder"
    revision: str | None = None
    # seconds spent loading weights on first use (lazy encoders); reported apart from embedding time
    load_seconds: float = 0.0

    @classmethod
    def embeds_images(cls) -> bool:
        """Whether the class embeds images (it implements ``_embed_images``); known before any weights load."""
        return cls._embed_images is not Encoder._embed_images

    @property
    def has_images(self) -> bool:
        """Inferred from the class, never declared beside it: an image adapter is always scored on images."""
        return type(self).embeds_images()

    def geometry(self) -> Geometry:
        """How the metrics read this model's vectors (see :class:`Geometry`)."""
        return DEFAULT_GEOMETRY

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
        return self.encode_text([self.geometry().root_text])[0]

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
        geometry = self.geometry()
        return {"name": self.name, "revision": self.revision, "fingerprint": self.fingerprint(),
                "parameters": self.parameter_count(), "dim": int(self.root().shape[0]),
                "modalities": ["text", "image"] if self.has_images else ["text"], "root_text": geometry.root_text,
                "own_geometry": not geometry.is_default()}

    def parameter_count(self) -> int | None:
        return None
