"""Model spec strings -> Encoder adapters.

| spec | adapter |
| --- | --- |
| ``minilm`` | the packaged all-MiniLM-L6-v2 (offline) |
| ``st:NAME_OR_DIR`` | sentence-transformers |
| ``text:NAME_OR_DIR`` | transformers encoder + mean pooling |
| ``hf:NAME_OR_DIR`` or a bare hub id | transformers dual encoder (CLIP, SigLIP, ...) + its processor |
| ``open_clip:NAME[/PRETRAINED]``, ``open_clip:hf-hub:ORG/REPO``, ``open_clip:local-dir:DIR`` | open_clip |
| ``reco:FOLDER[#image|#text]`` | a trained RECO model (frozen base + memory + fusion) |
| a folder | detected: a hierarcaps fine-tuned checkpoint, sentence-transformers, open_clip or transformers |
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelSpecError
from .base import Encoder

CHECKPOINT_FILE = "hierarcaps_model.json"


def _st(source: str, device: str | None) -> Encoder:
    from .text import SentenceTransformerEncoder

    return SentenceTransformerEncoder(source, device=device)


def _sentence_folder(source: str, device: str | None) -> Encoder:
    """A local sentence-transformers folder: plain mean pooling through transformers when that is all it is."""
    from .text import MeanPoolEncoder, SentenceTransformerEncoder, is_mean_pooling_pipeline

    if is_mean_pooling_pipeline(Path(source)):
        return MeanPoolEncoder(source, device=device)
    return SentenceTransformerEncoder(source, device=device)


def _mean_pool(source: str, device: str | None) -> Encoder:
    from .text import MeanPoolEncoder

    return MeanPoolEncoder(source, device=device)


def _hf(source: str, device: str | None) -> Encoder:
    from .hf_clip import HFDualEncoder

    return HFDualEncoder(source, device=device)


def _open_clip(source: str, device: str | None) -> Encoder:
    from .openclip import OpenClipEncoder

    return OpenClipEncoder(source, device=device)


def _reco(source: str, device: str | None) -> Encoder:
    from ..reco.encoder import RecoEncoder

    return RecoEncoder(source, device=device)


PREFIXES: dict[str, Callable[[str, str | None], Encoder]] = {
    "st:": _st, "text:": _mean_pool, "hf:": _hf, "open_clip:": _open_clip, "reco:": _reco,
}
# how a saved folder reloads, by the spec prefix an adapter saves itself under
FOLDER_ADAPTERS: dict[str, tuple[str, Callable[[str, str | None], Encoder], bool]] = {
    "hf:": ("hf", _hf, True),
    "text:": ("text", _mean_pool, False),
    "open_clip:local-dir:": ("open_clip", lambda source, device: _open_clip(f"local-dir:{source}", device), True),
}


def _hf_image_transform(source: str) -> Callable[[object], object]:
    from .hf_clip import folder_image_transform

    return folder_image_transform(source)


# image transforms that load without the weights, so decoding can start before the model loads
EARLY_IMAGE_TRANSFORMS: dict[str, Callable[[str], Callable[[object], object]]] = {"hf": _hf_image_transform}


def folder_adapter(folder: Path) -> tuple[str, Callable[[str, str | None], Encoder], bool]:
    """(adapter name, factory, has images) for a local model folder, from the files it holds."""
    if (folder / CHECKPOINT_FILE).exists():
        prefix = json.loads((folder / CHECKPOINT_FILE).read_text())["spec_prefix"]
        return FOLDER_ADAPTERS[prefix]
    if (folder / "modules.json").exists():
        return "sentence-folder", _sentence_folder, False
    if (folder / "open_clip_config.json").exists():
        return FOLDER_ADAPTERS["open_clip:local-dir:"]
    if (folder / "config.json").exists():
        config = json.loads((folder / "config.json").read_text())
        text_only = "text_config" not in config and "vision_config" not in config
        return FOLDER_ADAPTERS["text:" if text_only else "hf:"]
    raise ModelSpecError(f"{folder} holds no model this package recognises "
                         "(expected config.json, modules.json, open_clip_config.json or hierarcaps_model.json)")


def folder_name(folder: Path) -> str:
    """A local model's name: its checkpoint's, else the folder's own name (never a path: results and boards show it)."""
    checkpoint = folder / CHECKPOINT_FILE
    return json.loads(checkpoint.read_text()).get("name", folder.name) if checkpoint.exists() else folder.resolve().name


def load_folder(folder: Path, device: str | None, *, lazy: bool = False, name: str | None = None) -> Encoder:
    """The model in a local folder; with ``lazy`` its weights load only when something is embedded."""
    adapter, factory, has_images = folder_adapter(folder)
    name = name or folder_name(folder)
    if lazy:
        from .lazy import LazyEncoder

        early_transform = EARLY_IMAGE_TRANSFORMS.get(adapter)
        return LazyEncoder(folder, lambda: factory(str(folder), device), name=name, has_images=has_images,
                           adapter=adapter, device=device,
                           load_image_transform=functools.partial(early_transform, str(folder)) if early_transform
                           else None)
    encoder = factory(str(folder), device)
    encoder.name = name
    return encoder


KNOWN_NAMES = ("minilm",)


def check_prefix(spec: str) -> None:
    """A spec that looks like ``prefix:...`` with an unknown prefix (or a misspelt name) fails with a suggestion."""
    import difflib
    import re

    match = re.match(r"^([A-Za-z][A-Za-z0-9_-]*:)", spec)
    if match and match.group(1) not in PREFIXES and not re.match(r"^[A-Za-z]:[\\/]", spec):
        close = difflib.get_close_matches(match.group(1), list(PREFIXES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known prefixes: {', '.join(PREFIXES)}"
        raise ModelSpecError(f"model spec {spec!r}: unknown prefix {match.group(1)!r}{hint}")
    if "/" not in spec and ":" not in spec and (close := difflib.get_close_matches(spec, KNOWN_NAMES, n=1)):
        raise ModelSpecError(f"model spec {spec!r} does not resolve; did you mean {close[0]!r}?")


def load_encoder(spec: str, *, device: str | None = None, lazy: bool = False) -> Encoder:
    """Load the model a spec names; unknown or unloadable specs raise ModelSpecError with the reason.

    ``lazy`` (used by the harness) defers loading local folders until something must be embedded.
    """
    if spec == KNOWN_NAMES[0]:
        from .text import packaged_minilm_path

        return load_folder(Path(packaged_minilm_path()), device, lazy=lazy, name="all-MiniLM-L6-v2")
    for prefix, factory in PREFIXES.items():
        if spec.startswith(prefix):
            return factory(spec[len(prefix):], device)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder(path, device, lazy=lazy)
    check_prefix(spec)
    if path.suffix or spec.startswith((".", "/", "~")):
        raise ModelSpecError(f"model spec {spec!r}: no such folder")
    if "/" in spec:
        return _hf(spec, device)
    raise ModelSpecError(f"model spec {spec!r} does not resolve; use minilm, st:, text:, hf:, open_clip:, "
                         "a hub id (org/name) or a model folder")
