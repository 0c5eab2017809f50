"""Hugging Face dual encoders (CLIP, SigLIP, ... anything with get_text/image_features) with their own processor."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelSpecError
from .base import source_name
from .folders import NO_REMOTE_CODE, SAFE_WEIGHTS
from .torch_utils import TorchEncoder, pick_device


def features(output: Any) -> Any:
    """Projected features whether ``get_*_features`` returns a tensor or an output object (transformers 5)."""
    import torch

    return output if torch.is_tensor(output) else output.pooler_output


def load_processor(source: str, revision: str | None = None) -> Any:
    """The checkpoint's own processor (tokenizer + image processor), or an error saying what is missing."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source, revision=revision, **NO_REMOTE_CODE)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelSpecError(f"{source!r} has no usable processor (tokenizer + image processor): {exc}. "
                             "Save one next to the weights with processor.save_pretrained(DIR)") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelSpecError(f"{source!r}: the processor lacks a tokenizer or an image processor")
    return processor


def pixel_values(image_processor: Any, image: Any) -> Any:
    """One image through the checkpoint's image processor: a (3, H, W) tensor."""
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def folder_image_transform(source: str) -> Callable[[Any], Any]:
    """A checkpoint folder's image transform without its weights: decoding can start before the model loads."""
    return functools.partial(pixel_values, load_processor(source).image_processor)


class HFDualEncoder(TorchEncoder):
    """A transformers image-text model loaded with ``AutoModel`` and ``AutoProcessor`` from a hub id or folder."""

    spec_prefix = "hf:"

    def __init__(self, source: str, *, device: str | None = None, revision: str | None = None) -> None:
        from transformers import AutoModel

        self.device = pick_device(device)
        try:
            model = AutoModel.from_pretrained(source, revision=revision, **SAFE_WEIGHTS)
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"cannot load Hugging Face model {source!r}: {exc}") from None
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise ModelSpecError(f"{source!r} ({type(model).__name__}) is not a dual encoder "
                                 "(no get_text_features/get_image_features)")
        self.processor = load_processor(source, revision)
        self.model = model.eval().to(self.device)
        self.name = source_name(source)
        self.revision = revision or getattr(model.config, "_commit_hash", None)
        self.padding: bool | str = "max_length" if "siglip" in model.config.model_type else True

    def text_features(self, texts: list[str]) -> Any:
        tokens = self.processor.tokenizer(texts, padding=self.padding, truncation=True, return_tensors="pt")
        return features(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))

    def image_transform(self, image: Any) -> Any:
        return pixel_values(self.processor.image_processor, image)

    def image_features(self, pixels: Any) -> Any:
        return features(self.model.get_image_features(pixel_values=pixels))

    def text_parameters(self) -> list[Any]:
        towers = [getattr(self.model, name) for name in ("text_model", "text_projection") if hasattr(self.model, name)]
        return [p for tower in towers for p in tower.parameters()]

    def save(self, folder: str | Path) -> None:
        """The model and its processor, plus ``preprocessor_config.json`` (the image processor's settings under
        the name transformers 4.x reads), so the authors' evaluation code loads the folder as it is."""
        from .. import jsonfile

        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        legacy = Path(folder) / "preprocessor_config.json"
        if not legacy.exists():
            settings = {**self.processor.image_processor.to_dict(), "processor_class": type(self.processor).__name__}
            legacy.write_text(jsonfile.dumps(settings))

    def preprocessing(self) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer
        return {"tokenizer": type(tokenizer).__name__, "max_length": tokenizer.model_max_length,
                "padding": self.padding, "image_processor": self.processor.image_processor.to_dict()}
