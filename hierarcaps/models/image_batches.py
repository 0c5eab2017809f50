"""Image files -> pixel batches for an image tower, decoded and preprocessed in DataLoader worker processes.

On CPU the model's forward pass keeps every core busy, and a decoding process beside it slows the forward
pass far more than the decoding itself costs (2 s of decoding cost 13 s of ViT-B/32 forward time on
2 cores), so there the images are decoded a chunk at a time while the model waits. On a GPU the workers
decode ahead while the device computes. Decoding starts as soon as the batches are made, so it can run
while the model is still loading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# decoded images held at once on CPU: 1,024 x 3 x 224 x 224 float32 pixels is about 600 MB
DEFAULT_CHUNK_IMAGES = 1024


class ImageFiles:
    """A map-style dataset of image files (or PIL images) passed through ``transform``."""

    def __init__(self, paths: Sequence[Any], transform: Callable[[Any], Any]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        from ..data.images import open_image, rgb

        item = self.paths[index]
        image = rgb(item) if hasattr(item, "convert") else open_image(item)   # a PIL image or a path
        return self.transform(image)


def _single_threaded_worker(_: int) -> None:
    """One thread per decoding process: the processes themselves are the parallelism."""
    import torch

    torch.set_num_threads(1)


class ImageBatches:
    """Pixel batches of ``paths`` in order; the first chunk starts decoding when this is made.

    ``device`` decides the schedule: ``"cpu"`` decodes chunks of ``chunk_images`` with the model waiting,
    anything else streams with the workers running ahead. ``workers=0`` decodes in this process.
    """

    def __init__(self, paths: Sequence[Any], transform: Callable[[Any], Any], *, batch_size: int, workers: int,
                 device: str, chunk_images: int = DEFAULT_CHUNK_IMAGES) -> None:
        self.files = ImageFiles(paths, transform)
        self.batch_size, self.workers = batch_size, workers
        self.overlap = device != "cpu"
        self.pin_memory = device.startswith("cuda")     # pinned batches copy to the GPU asynchronously
        per_chunk = len(self.files) if self.overlap else max(1, chunk_images // batch_size) * batch_size
        self.chunks = [range(start, min(start + per_chunk, len(self.files)))
                       for start in range(0, len(self.files), max(per_chunk, 1))]
        self._started = self._start(self.chunks[0]) if self.chunks else None

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def _start(self, chunk: range) -> Iterator[Any]:
        """Begin decoding ``chunk``: on CPU every batch of it is handed to the workers at once."""
        from torch.utils.data import DataLoader, Subset

        prefetch = None
        if self.workers:
            prefetch = 2 if self.overlap else math.ceil(len(chunk) / self.batch_size / self.workers)
        loader = DataLoader(Subset(self.files, chunk), batch_size=self.batch_size, num_workers=self.workers,
                            prefetch_factor=prefetch, worker_init_fn=_single_threaded_worker,
                            pin_memory=self.pin_memory)
        return iter(loader)

    def __iter__(self) -> Iterator[Any]:
        for index in range(len(self.chunks)):
            running = self._started or self._start(self.chunks[index])
            self._started = None
            if self.overlap:
                yield from running
            else:
                yield from list(running)     # decode the whole chunk first: the workers have the cores

    def close(self) -> None:
        """Stop decoding that was started but will not be consumed (its worker processes exit)."""
        self._started = None
