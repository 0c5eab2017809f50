"""open_clip models: ``NAME[/PRETRAINED]`` (a tag or a weights file), ``hf-hub:ORG/REPO``, ``local-dir:DIR``,
or a model config JSON (registered with ``add_model_config``)."""

from __future__ import annotations

from pathlib import Path
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


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``ViT-B-32/openai`` -> (ViT-B-32, openai); ``hf-hub:x/y`` -> (hf-hub:x/y, None); ``cfg.json/w.pt`` too."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    name, _, pretrained = spec.partition("/")
    if name.endswith(".json") or Path(spec).suffix == ".json":
        return spec, None
    return name, pretrained or None


class OpenClipEncoder(TorchEncoder):
    """An open_clip model with the tokenizer and eval transform that travel with it."""

    has_images = True

    def __init__(self, spec: str, *, device: str | None = None, pretrained: str | None = None) -> None:
        import open_clip

        name, tag = parse_open_clip_spec(spec)
        pretrained = pretrained or tag
        if name.endswith(".json"):
            config = Path(name)
            if not config.exists():
                raise ModelSpecError(f"open_clip config {name} not found")
            open_clip.add_model_config(config)
            name = config.stem
        self.device = pick_device(device)
        try:
            model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                        device=self.device)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelSpecError(f"cannot load open_clip model {spec!r}: {exc}") from None
        self.model = model.eval()
        self.transform = transform
        self.tokenizer = open_clip.get_tokenizer(name)
        self.name = f"open_clip:{name}" + (f"/{pretrained}" if pretrained else "")
        self.revision = pretrained

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        def embed(batch: list[str]) -> Any:
            with autocast(self.device):
                return self.model.encode_text(self.tokenizer(batch).to(self.device))
        return embed_text_batches(texts, batch_size, progress, "Embedding texts", embed)

    def _embed_images(self, paths: list[Any], *, batch_size: int, workers: int, progress: bool) -> np.ndarray:
        def embed(pixels: Any) -> Any:
            with autocast(self.device):
                return self.model.encode_image(pixels.to(self.device))
        return embed_image_batches(paths, self.transform, batch_size, workers, progress, embed)

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": type(self.tokenizer).__name__,
                "context_length": getattr(self.tokenizer, "context_length", None), "transform": repr(self.transform)}
