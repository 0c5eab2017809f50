"""Encoders whose identity comes from the files of a local model folder, loaded only when needed.

A cached re-run then costs no model load at all (importing torch + transformers alone takes seconds):
the folder's content hash keys the embedding cache, and the model's size and dimension are remembered
in a small JSON next to the cache after the first real load.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_bytes_atomic
from ..data.fetch import cache_dir
from ..metrics.hierarchy import DEFAULT_ROOT_TEXT
from .base import Encoder
from .decoding import ImageBatches
from .folders import folder_fingerprint


class LazyEncoder(Encoder):
    """Stands in for the encoder a factory builds; builds it on the first call that needs the weights."""

    def __init__(self, folder: Path, factory: Callable[[], Encoder], *, name: str, has_images: bool,
                 adapter: str, device: str | None = None,
                 load_image_transform: Callable[[], Callable[[Any], Any]] | None = None) -> None:
        self.folder, self._factory, self._loaded = folder, factory, None
        self.name, self.has_images, self.adapter = name, has_images, adapter
        self.device, self.load_image_transform = device, load_image_transform
        self._fingerprint = folder_fingerprint(folder)
        self._memo_read: dict[str, Any] | None = None

    @contextlib.contextmanager
    def _counting_load_time(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.load_seconds += time.perf_counter() - start

    @property
    def loaded(self) -> Encoder:
        if self._loaded is None:
            with self._counting_load_time():
                self._loaded = self._factory()
            self._loaded.name = self.name
        return self._loaded

    def fingerprint(self) -> str:
        return self._fingerprint

    def preprocessing(self) -> dict[str, Any]:
        return {"adapter": self.adapter}      # tokenizer and transform configs are files of the folder

    def numerics(self) -> str:
        from .torch_utils import numerics, pick_device_lightly

        return numerics(pick_device_lightly(self.device))

    def encode_text(self, texts, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        return self.loaded.encode_text(texts, **kwargs)

    def encode_image(self, images: Sequence[Any] | ImageBatches, *, batch_size: int = 64, workers: int = 1,
                     progress: bool = False) -> np.ndarray:
        """With a weight-free image transform, the images decode while the weights load."""
        if self._loaded is None and self.load_image_transform and not isinstance(images, ImageBatches):
            from .torch_utils import pick_device_lightly

            with self._counting_load_time():
                transform = self.load_image_transform()
            images = ImageBatches(list(images), transform, batch_size=batch_size,
                                  workers=workers, device=pick_device_lightly(self.device))
        return self.loaded.encode_image(images, batch_size=batch_size, workers=workers, progress=progress)

    # -- geometry: the model's own hooks, whether it is loaded or its embeddings come from the cache --------
    def _memo_path(self) -> Path:
        return cache_dir() / "models" / f"{self._fingerprint.split(':')[-1]}.json"

    def _memo(self) -> dict[str, Any] | None:
        """The memo of an earlier load (read once: it is keyed by the weights, so it never changes)."""
        if self._memo_read is None:
            path = self._memo_path()
            memo = json.loads(path.read_text()) if path.exists() else None
            self._memo_read = memo if memo is not None and "own_geometry" in memo else None
        return self._memo_read

    def _geometry(self) -> Encoder | None:
        """The loaded model when its geometry is its own (or not yet known), None for the default geometry.

        A model whose earlier load recorded the default geometry is not loaded for it (a cached run stays
        light); any other is, so cached and cold runs score the same way."""
        if self._loaded is not None:
            return self._loaded if self._loaded.has_own_geometry() else None
        memo = self._memo()
        return None if memo is not None and memo["own_geometry"] is False else self.loaded

    @property
    def root_text(self) -> str:  # type: ignore[override]
        source = self._geometry()
        return source.root_text if source is not None else DEFAULT_ROOT_TEXT

    def distance_to_root(self, text_emb: np.ndarray, root: np.ndarray) -> np.ndarray:
        source = self._geometry()
        return source.distance_to_root(text_emb, root) if source is not None else super().distance_to_root(
            text_emb, root)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        source = self._geometry()
        return source.similarity(a, b) if source is not None else super().similarity(a, b)

    def has_own_geometry(self) -> bool:
        return self._geometry() is not None

    def metadata(self) -> dict[str, Any]:
        """Size, dimension and geometry from the memo of an earlier load, else from loading the model now."""
        memo = self._memo()
        if memo is not None:
            return memo
        info = {**self.loaded.metadata(), "name": self.name, "fingerprint": self._fingerprint,
                "folder": self.folder.name}
        write_bytes_atomic(self._memo_path(), json.dumps(info).encode())
        self._memo_read = info
        return info
