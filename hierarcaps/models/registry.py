"""Model spec strings -> Encoder adapters.

| spec | adapter |
| --- | --- |
| ``minilm`` | the packaged all-MiniLM-L6-v2 (offline) |
| ``st:NAME_OR_DIR`` | sentence-transformers |
| ``text:NAME_OR_DIR`` | transformers encoder + mean pooling |
| ``hf:NAME_OR_DIR`` or a bare hub id | transformers dual encoder (CLIP, SigLIP, ...) + its processor |
| ``open_clip:NAME[/PRETRAINED]``, ``open_clip:hf-hub:ORG/REPO``, ``open_clip:local-dir:DIR`` | open_clip |
| a folder | detected: a hierarcaps fine-tuned checkpoint, sentence-transformers, open_clip or transformers |
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelSpecError
from .base import Encoder

CHECKPOINT_FILE = "hierarcaps_model.json"


def _minilm(_: str, device: str | None) -> Encoder:
    from .text import packaged_minilm_path

    return _sentence_folder(packaged_minilm_path(), device, name="all-MiniLM-L6-v2")


def _st(source: str, device: str | None) -> Encoder:
    from .text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(source, device=device)


def _sentence_folder(source: str, device: str | None, name: str | None = None) -> Encoder:
    """A local sentence-transformers folder: plain mean pooling through transformers when that is all it is."""
    from .text import MeanPoolEncoder, SentenceTransformerEncoder, is_mean_pooling_pipeline

    if is_mean_pooling_pipeline(Path(source)):
        return MeanPoolEncoder(source, device=device, name=name or Path(source).name)
    return SentenceTransformerEncoder(source, device=device, name=name)


def _mean_pool(source: str, device: str | None) -> Encoder:
    from .text import MeanPoolEncoder

    return MeanPoolEncoder(source, device=device)


def _hf(source: str, device: str | None) -> Encoder:
    from .hf_clip import HFDualEncoder

    return HFDualEncoder(source, device=device)


def _open_clip(source: str, device: str | None) -> Encoder:
    from .openclip import OpenClipEncoder

    return OpenClipEncoder(source, device=device)


PREFIXES: dict[str, Callable[[str, str | None], Encoder]] = {
    "st:": _st, "text:": _mean_pool, "hf:": _hf, "open_clip:": _open_clip,
}


def detect_folder(folder: Path) -> Callable[[str, str | None], Encoder]:
    """The adapter for a local model folder, from the files it holds."""
    if (folder / CHECKPOINT_FILE).exists():
        info = json.loads((folder / CHECKPOINT_FILE).read_text())
        return PREFIXES[info["adapter"]]
    if (folder / "modules.json").exists():
        return _sentence_folder
    if (folder / "open_clip_config.json").exists():
        return lambda source, device: _open_clip(f"local-dir:{source}", device)
    if (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
        text_only = "text_config" not in config and "vision_config" not in config
        return _mean_pool if text_only else _hf
    raise ModelSpecError(f"{folder} holds no model this package recognises "
                         "(expected config.json, modules.json, open_clip_config.json or hierarcaps_model.json)")


def load_encoder(spec: str, *, device: str | None = None) -> Encoder:
    """Load the model a spec names; unknown or unloadable specs raise ModelSpecError with the reason."""
    if spec == "minilm":
        return _minilm(spec, device)
    for prefix, factory in PREFIXES.items():
        if spec.startswith(prefix):
            return factory(spec[len(prefix):], device)
    path = Path(spec).expanduser()
    if path.is_dir():
        return detect_folder(path)(str(path), device)
    if path.suffix or spec.startswith((".", "/", "~")):
        raise ModelSpecError(f"model spec {spec!r}: no such folder")
    if "/" in spec:
        return _hf(spec, device)
    raise ModelSpecError(f"model spec {spec!r} does not resolve; use minilm, st:, text:, hf:, open_clip:, "
                         "a hub id (org/name) or a model folder")
