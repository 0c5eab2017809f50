"""Shared torch plumbing for the adapters: devices, weight fingerprints, batching helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HierarcapsError
from .base import Encoder
from .image_batches import ImageBatches


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for the next batch instead of handing it back to the operating system.

    By default every freed block over 32 MB is returned, and the next batch page-faults its activations in
    again: about 560,000 faults per ViT-B/32 batch of 64 images, which makes CPU forward passes 20-30%
    slower. Process-wide (forked workers inherit it); False where the C library is not glibc.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1))


def pick_device(device: str | None = None) -> str:
    if device:
        return check_device(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` if torch can run on it here; else one line saying what this machine has, before anything
    loads (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import re

    kind = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", device)
    if kind is None:
        raise HierarcapsError(f"--device {device[:40]!r}: not a device (cpu, cuda, cuda:N or mps)")
    if kind.group(1) == "cpu":
        return device
    import torch

    if kind.group(1) == "mps":
        if not torch.backends.mps.is_available():
            raise HierarcapsError("--device mps: no Apple GPU here; use --device cpu or leave it out")
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(kind.group(2) or 0) >= count:
        raise HierarcapsError(f"--device {device}: torch sees {count} CUDA GPU(s) here; use --device cpu or "
                              "leave it out")
    return device


GPU_DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")


def pick_device_lightly(device: str | None = None) -> str:
    """``pick_device`` that imports torch only where a GPU driver is present: a cached CPU re-run stays light."""
    if device or any(Path(marker).exists() for marker in GPU_DRIVER_FILES):
        return pick_device(device)
    return "cpu"


def numerics(device: str) -> str:
    """How embeddings are computed on ``device`` (part of the cache key): bf16 autocast on GPU, else fp32."""
    return "bf16-autocast" if device.startswith("cuda") else "fp32"


def training_autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    """A training forward's arithmetic: exact fp32 (the authors' trainer), or bf16 autocast on any device."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def autocast(device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPU; exact fp32 on CPU (no quantisation there)."""
    import torch

    if numerics(device) == "bf16-autocast":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""What a model's weights and arithmetic may be: ``auto`` is bfloat16 on a GPU that supports it, else float32."""


def torch_dtype(name: str, device: str = "cpu") -> Any:
    """The torch dtype a setting of ``DTYPES`` names on ``device`` (``auto``: bfloat16 on a GPU that supports it,
    float32 elsewhere; a CPU computes bfloat16 slowly, a GPU float32 slowly)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def weights_fingerprint(module: Any) -> str:
    """xxh3-128 over every parameter and buffer (names, shapes, bytes): cheap even for large models."""
    import torch
    import xxhash

    digest = xxhash.xxh3_128()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=torch.uint8).numpy())
    return "xxh3:" + digest.hexdigest()


def parameter_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Index batches of texts sorted by length, so padding (and wasted compute) is minimal."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def embed_text_batches(texts: list[str], batch_size: int, progress: bool, desc: str,
                       embed: Callable[[list[str]], Any]) -> np.ndarray:
    """Run ``embed`` over length-sorted batches and return rows in the original order.

    Vectors stay on the model's device until the end: a GPU never waits for a per-batch copy back.
    """
    import torch
    from tqdm.auto import tqdm

    chunks, order = [], []
    with torch.inference_mode():
        for batch in tqdm(list(length_sorted_batches(texts, batch_size)), desc=desc, disable=not progress,
                          unit="batch"):
            chunks.append(embed([texts[i] for i in batch]).float())
            order.extend(batch)
    vectors = torch.cat(chunks).cpu().numpy()
    out = np.empty_like(vectors)
    out[order] = vectors
    return out


def embed_image_batches(batches: ImageBatches, progress: bool, embed: Callable[[Any], Any]) -> np.ndarray:
    """Run ``embed`` over the pixel batches as they come out of decoding (vectors copied back once, at the end)."""
    import torch
    from tqdm.auto import tqdm

    from ..errors import DataError

    chunks = []
    try:
        with torch.inference_mode():
            for pixels in tqdm(batches, desc="Embedding images", disable=not progress, unit="batch"):
                chunks.append(embed(pixels).float())
    except DataError as exc:
        # a worker's error arrives wrapped in its traceback: keep the one line that names the file
        raise DataError(str(exc).strip().splitlines()[-1].removeprefix("hierarcaps.errors.DataError: ")) from None
    finally:
        batches.close()
    return torch.cat(chunks).cpu().numpy()


class TorchEncoder(Encoder):
    """An encoder backed by one torch module ``self.model``.

    Subclasses provide differentiable ``text_features`` (and ``image_transform``/``image_features`` for
    image-text models); evaluation and fine-tuning share them, so both see the very same computation.
    They also name the text-side parameters that fine-tuning trains and how to save themselves.
    """

    model: Any
    device: str = "cpu"
    spec_prefix: str = ""
    _fingerprint: str | None = None

    @classmethod
    def embeds_images(cls) -> bool:
        """Torch adapters embed images when they implement ``image_features``."""
        return cls.image_features is not TorchEncoder.image_features

    def text_features(self, texts: list[str]) -> Any:
        """Unnormalised text features with gradients when enabled: (n, d) tensor."""
        raise NotImplementedError

    def image_transform(self, image: Any) -> Any:
        raise NotImplementedError

    def image_features(self, pixels: Any) -> Any:
        raise NotImplementedError

    def text_parameters(self) -> list[Any]:
        """The parameters Radial Embedding fine-tuning trains (text tower and text projection)."""
        raise NotImplementedError

    def save(self, folder: str | Path) -> None:
        """Write weights and preprocessing so that ``load_encoder(spec_prefix + folder)`` restores this model."""
        raise NotImplementedError

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        def embed(batch: list[str]) -> Any:
            with autocast(self.device):
                return self.text_features(batch)
        return embed_text_batches(texts, batch_size, progress, "Embedding texts", embed)

    def _embed_images(self, images: list[Any] | ImageBatches, *, batch_size: int, workers: int,
                      progress: bool) -> np.ndarray:
        def embed(pixels: Any) -> Any:
            with autocast(self.device):
                return self.image_features(pixels.to(self.device, non_blocking=True))
        if not isinstance(images, ImageBatches):
            images = ImageBatches(images, self.image_transform, batch_size=batch_size, workers=workers,
                                  device=self.device)
        return embed_image_batches(images, progress, embed)

    def numerics(self) -> str:
        return numerics(self.device)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def forget_fingerprint(self) -> None:
        """Call after changing the weights (training) so caches see a new model."""
        self._fingerprint = None

    def parameter_count(self) -> int:
        return parameter_count(self.model)
