"""Hugging Face dual encoders (CLIP, SigLIP, ... anything with get_text/image_features) with their own processor."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelSpecError
from .torch_utils import (
    TorchEncoder,
    autocast,
    embed_image_batches,
    embed_text_batches,
    pick_device,
)


def features(output: Any) -> Any:
    """Projected features whether ``get_*_features`` returns a tensor or an output object (transformers 5)."""
    import torch

    return output if torch.is_tensor(output) else output.pooler_output


class HFDualEncoder(TorchEncoder):
    """A transformers image-text model loaded with ``AutoModel`` and ``AutoProcessor`` from a hub id or folder."""

    has_images = True

    def __init__(self, source: str, *, device: str | None = None, revision: str | None = None) -> None:
        from transformers import AutoModel, AutoProcessor

        self.device = pick_device(device)
        try:
            model = AutoModel.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"cannot load Hugging Face model {source!r}: {exc}") from None
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise ModelSpecError(f"{source!r} ({type(model).__name__}) is not a dual encoder "
                                 "(no get_text_features/get_image_features)")
        try:
            self.processor = AutoProcessor.from_pretrained(source, revision=revision)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelSpecError(f"{source!r} has no usable processor (tokenizer + image processor): {exc}. "
                                 "Save one next to the weights with processor.save_pretrained(DIR)") from None
        if not hasattr(self.processor, "image_processor") or not hasattr(self.processor, "tokenizer"):
            raise ModelSpecError(f"{source!r}: the processor lacks a tokenizer or an image processor")
        self.model = model.eval().to(self.device)
        self.name = source
        self.revision = revision or getattr(model.config, "_commit_hash", None)
        self.padding: bool | str = "max_length" if "siglip" in model.config.model_type else True

    def _tokens(self, texts: list[str]) -> dict[str, Any]:
        tokens = self.processor.tokenizer(texts, padding=self.padding, truncation=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in tokens.items()}

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        def embed(batch: list[str]) -> Any:
            with autocast(self.device):
                return features(self.model.get_text_features(**self._tokens(batch)))
        return embed_text_batches(texts, batch_size, progress, "Embedding texts", embed)

    def _pixels(self, image: Any) -> Any:
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def _embed_images(self, paths: list[Any], *, batch_size: int, workers: int, progress: bool) -> np.ndarray:
        def embed(pixels: Any) -> Any:
            with autocast(self.device):
                return features(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        return embed_image_batches(paths, self._pixels, batch_size, workers, progress, embed)

    def preprocessing(self) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer
        return {"tokenizer": type(tokenizer).__name__, "max_length": tokenizer.model_max_length,
                "padding": self.padding, "image_processor": self.processor.image_processor.to_dict()}
