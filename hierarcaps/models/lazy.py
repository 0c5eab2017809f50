"""Encoders of a local model folder, loaded only when something must be embedded.

A model has one identity, its weights fingerprint, whichever way it is loaded: the lazy wrapper learns it (with
the model's size, dimension, preprocessing and geometry) at its first real load and memoises it under the
folder's file hash, so a cached re-run loads nothing (importing torch + transformers alone takes seconds) and
still keys caches, names result folders and records lineage exactly as the eagerly loaded model does.
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
from .base import DEFAULT_GEOMETRY, Encoder, Geometry
from .folders import folder_fingerprint
from .image_batches import ImageBatches

MEMO_VERSION = 2
"""Memos of earlier versions keyed identity by the files; they are not read."""


class LazyEncoder(Encoder):
    """Stands in for the encoder a factory builds; builds it on the first call that needs the weights."""

    def __init__(self, folder: Path, factory: Callable[[], Encoder], *, name: str, has_images: bool,
                 adapter: str, device: str | None = None,
                 load_image_transform: Callable[[], Callable[[Any], Any]] | None = None) -> None:
        self.folder, self._factory, self._loaded = folder, factory, None
        self.name, self._has_images, self.adapter = name, has_images, adapter
        self.device, self.load_image_transform = device, load_image_transform
        self._files = folder_fingerprint(folder)
        self._memo_read: dict[str, Any] | None = None

    @property
    def has_images(self) -> bool:  # type: ignore[override]
        return self._has_images

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
        """The weights fingerprint (the eager model's), from the memo or by loading the model once."""
        return self.metadata()["fingerprint"]

    def preprocessing(self) -> dict[str, Any]:
        return self._memo_or_load()["preprocessing"]

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

    def geometry(self) -> Geometry:
        """The loaded model's; without loading it only when an earlier load recorded the default geometry (a
        model with its own is loaded for it, so cached and cold runs score the same way)."""
        if self._loaded is None and self._memo() is not None and not self._memo()["own_geometry"]:
            return DEFAULT_GEOMETRY
        return self.loaded.geometry()

    def metadata(self) -> dict[str, Any]:
        """Identity, size, dimension and geometry, as the eager model reports them."""
        memo = self._memo_or_load()
        return {**{k: v for k, v in memo.items() if k not in ("preprocessing", "memo")}, "name": self.name}

    # -- the memo: what the first real load learnt, keyed by the folder's files and the adapter -------------
    def _memo_path(self) -> Path:
        return cache_dir() / "models" / f"{self._files.split(':')[-1]}-{self.adapter}.json"

    def _memo(self) -> dict[str, Any] | None:
        """The memo of an earlier load (read once: the files it is keyed by decide the weights)."""
        if self._memo_read is None:
            path = self._memo_path()
            memo = json.loads(path.read_text()) if path.exists() else None
            self._memo_read = memo if isinstance(memo, dict) and memo.get("memo") == MEMO_VERSION else None
        return self._memo_read

    def _memo_or_load(self) -> dict[str, Any]:
        memo = self._memo()
        if memo is None:
            loaded = self.loaded
            text = json.dumps({**loaded.metadata(), "preprocessing": loaded.preprocessing(), "memo": MEMO_VERSION},
                              default=str)
            write_bytes_atomic(self._memo_path(), text.encode())
            memo = self._memo_read = json.loads(text)      # what a later run reads: the same cache keys
        return memo
