"""Model spec strings -> Encoder adapters, from one catalogue.

Each adapter is declared once (``ADAPTERS``): its spec prefix, the class that loads it (imported by name when
a spec uses it), and a one-line description; the CLI help, the errors and ``hierarcaps models`` all read it.
Other packages add adapters through the ``hierarcaps.encoders`` entry-point group: the entry point's name is
the prefix (without the colon), its value an Encoder class (or factory) called as ``load(source, device=...)``,
imported only when a spec names it. Besides prefixes: ``minilm`` (the packaged all-MiniLM-L6-v2), a bare hub
id ``org/name`` (transformers dual encoder), and a local folder (detected from its files: a hierarcaps
fine-tuned checkpoint, sentence-transformers, open_clip or transformers).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import ModelSpecError
from .base import Encoder
from .folders import check_model_folder, read_json_object

CHECKPOINT_FILE = "hierarcaps_model.json"
ENTRY_POINT_GROUP = "hierarcaps.encoders"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """A spec prefix and the encoder class behind it (``module:attribute``, imported on first use)."""

    prefix: str
    target: str
    description: str
    example: str = ""
    origin: str = "hierarcaps"

    def factory(self) -> Callable[..., Encoder]:
        """The encoder class (or factory) behind the prefix; importing it loads no weights."""
        module, _, attribute = self.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ModelSpecError(f"adapter {self.prefix!r} ({self.target}) cannot be imported: {exc}") from None

    def load(self, source: str, device: str | None) -> Encoder:
        return self.factory()(source, device=device)

    def embeds_images(self) -> bool:
        """Inferred from the encoder class, as :attr:`Encoder.has_images` is."""
        factory = self.factory()
        return isinstance(factory, type) and issubclass(factory, Encoder) and factory.embeds_images()


ADAPTERS = (
    Adapter("st:", "hierarcaps.models.text:SentenceTransformerEncoder", "sentence-transformers model",
            "st:sentence-transformers/all-MiniLM-L6-v2"),
    Adapter("text:", "hierarcaps.models.text:MeanPoolEncoder", "transformers text encoder with mean pooling",
            "text:bert-base-uncased"),
    Adapter("hf:", "hierarcaps.models.hf_clip:HFDualEncoder",
            "transformers dual encoder (CLIP, SigLIP, ...) with its processor", "hf:openai/clip-vit-base-patch32"),
    Adapter("open_clip:", "hierarcaps.models.openclip:OpenClipEncoder",
            "open_clip: NAME/PRETRAINED, hf-hub:ORG/REPO, local-dir:DIR or a config JSON", "open_clip:ViT-B-32/openai"),
)


@functools.cache
def plugin_adapters() -> tuple[Adapter, ...]:
    """Adapters other packages declare under the ``hierarcaps.encoders`` entry-point group (names only: none
    is imported until a spec uses it)."""
    from importlib.metadata import entry_points

    found = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        origin = point.dist.name if point.dist is not None else "plugin"
        found.append(Adapter(f"{point.name}:", point.value, f"adapter from {origin}", origin=origin))
    return tuple(found)


def described(adapter: Adapter) -> tuple[str, str]:
    """An adapter's description and example for listings: a plugin's from its class (docstring, ``EXAMPLE``),
    imported only here; an adapter that cannot be imported keeps the line it has."""
    if adapter.origin == "hierarcaps" and adapter in ADAPTERS:
        return adapter.description, adapter.example
    try:
        factory = adapter.factory()
    except ModelSpecError:
        return adapter.description, adapter.example
    first_line = (factory.__doc__ or "").strip().split("\n")[0].rstrip(".")
    return first_line or adapter.description, getattr(factory, "EXAMPLE", adapter.example)


def adapters() -> tuple[Adapter, ...]:
    """Every adapter: the package's own, then plugins (a plugin cannot take a built-in prefix)."""
    own = {a.prefix for a in ADAPTERS}
    return (*ADAPTERS, *(a for a in plugin_adapters() if a.prefix not in own))


def spec_help() -> str:
    """One line for a ``--model`` option."""
    return "model spec: minilm (default), " + ", ".join(f"{a.prefix}..." for a in adapters()) + \
        ", a hub id org/name or a model folder (`hierarcaps models` lists them)"


def _adapter(prefix: str) -> Adapter:
    return next(a for a in ADAPTERS if a.prefix == prefix)


def _open_clip_folder(source: str, device: str | None) -> Encoder:
    return _adapter("open_clip:").load(f"local-dir:{source}", device)


# how a saved folder reloads, by the spec prefix an adapter saves itself under: (name, loader, its adapter)
FOLDER_ADAPTERS: dict[str, tuple[str, Callable[[str, str | None], Encoder], str]] = {
    "hf:": ("hf", _adapter("hf:").load, "hf:"),
    "text:": ("text", _adapter("text:").load, "text:"),
    "open_clip:local-dir:": ("open_clip", _open_clip_folder, "open_clip:"),
}


def _sentence_folder(source: str, device: str | None) -> Encoder:
    """A local sentence-transformers folder: plain mean pooling through transformers when that is all it is."""
    from .text import is_mean_pooling_pipeline

    return _adapter("text:" if is_mean_pooling_pipeline(Path(source)) else "st:").load(source, device)


def _hf_image_transform(source: str) -> Callable[[object], object]:
    from .hf_clip import folder_image_transform

    return folder_image_transform(source)


# image transforms that load without the weights, so decoding can start before the model loads
EARLY_IMAGE_TRANSFORMS: dict[str, Callable[[str], Callable[[object], object]]] = {"hf": _hf_image_transform}


def folder_adapter(folder: Path) -> tuple[str, Callable[[str, str | None], Encoder], bool]:
    """(adapter name, factory, whether it embeds images) for a local model folder, from the files it holds."""
    name, loader, prefix = folder_loader(folder)
    return name, loader, _adapter(prefix).embeds_images()


def folder_loader(folder: Path) -> tuple[str, Callable[[str, str | None], Encoder], str]:
    """(adapter name, loader, adapter prefix) for a local model folder, from the files it holds."""
    if (folder / CHECKPOINT_FILE).exists():
        prefix = read_json_object(folder / CHECKPOINT_FILE, what="fine-tuned checkpoint description").get("spec_prefix")
        if prefix not in FOLDER_ADAPTERS:
            raise ModelSpecError(f"{folder / CHECKPOINT_FILE}: spec_prefix {str(prefix)[:40]!r} is none of "
                                 f"{', '.join(FOLDER_ADAPTERS)}")
        return FOLDER_ADAPTERS[prefix]
    if (folder / "modules.json").exists():
        return "sentence-folder", _sentence_folder, "st:"
    if (folder / "open_clip_config.json").exists():
        return FOLDER_ADAPTERS["open_clip:local-dir:"]
    if (folder / "config.json").exists():
        config = read_json_object(folder / "config.json", what="model config")
        text_only = "text_config" not in config and "vision_config" not in config
        return FOLDER_ADAPTERS["text:" if text_only else "hf:"]
    raise ModelSpecError(f"{folder} holds no model this package recognises "
                         "(expected config.json, modules.json, open_clip_config.json or hierarcaps_model.json)")


def folder_name(folder: Path) -> str:
    """A local model's name: its checkpoint's, else the folder's own name (never a path: results and boards show it)."""
    checkpoint = folder / CHECKPOINT_FILE
    if not checkpoint.exists():
        return folder.resolve().name
    name = read_json_object(checkpoint, what="fine-tuned checkpoint description").get("name", folder.name)
    return name if isinstance(name, str) and name.strip() else folder.name


def load_folder(folder: Path, device: str | None, *, lazy: bool = False, name: str | None = None) -> Encoder:
    """The model in a local folder; with ``lazy`` its weights load only when something is embedded."""
    check_model_folder(folder)
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


DEFAULT_MODEL = "minilm"
"""The packaged all-MiniLM-L6-v2: what runs offline when no model is named."""
KNOWN_NAMES = (DEFAULT_MODEL,)


def check_prefix(spec: str) -> None:
    """A spec that looks like ``prefix:...`` with an unknown prefix (or a misspelt name) fails with a suggestion."""
    import difflib
    import re

    match = re.match(r"^([A-Za-z][A-Za-z0-9_-]*:)", spec)
    prefixes = [a.prefix for a in adapters()]
    if match and match.group(1) not in prefixes and not re.match(r"^[A-Za-z]:[\\/]", spec):
        close = difflib.get_close_matches(match.group(1), prefixes, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known prefixes: {', '.join(prefixes)}"
        raise ModelSpecError(f"model spec {spec!r}: unknown prefix {match.group(1)!r}{hint}")
    if "/" not in spec and ":" not in spec and (close := difflib.get_close_matches(spec, KNOWN_NAMES, n=1)):
        raise ModelSpecError(f"model spec {spec!r} does not resolve; did you mean {close[0]!r}?")


_LOADING = threading.local()
"""Per thread: the models being loaded in this call chain. A model whose base names itself (reco:A built on
reco:A) would otherwise recurse until Python gives up."""
MAX_BASE_DEPTH = 8


def _spec_key(spec: str) -> str:
    """One key per model a spec names: a folder by its resolved path, options and fragment dropped."""
    prefix, colon, rest = spec.partition(":")
    prefix = prefix + colon if colon and len(prefix) > 1 else ""
    target = (rest if prefix else spec).split("#")[0].split("?")[0]
    path = Path(target).expanduser()
    return prefix + (str(path.resolve()) if path.exists() else target)


def load_encoder(spec: str, *, device: str | None = None, lazy: bool = False) -> Encoder:
    """Load the model a spec names; unknown or unloadable specs raise ModelSpecError with the reason.

    ``lazy`` (used by the harness) defers loading local folders until something must be embedded. A
    ``device`` torch cannot use here is refused before anything loads.
    """
    if device is not None:
        from .torch_utils import check_device

        check_device(device)
    chain: list[str] = getattr(_LOADING, "chain", [])
    key = _spec_key(spec)
    if key in chain or len(chain) >= MAX_BASE_DEPTH:
        raise ModelSpecError(f"model spec {spec!r} loops: it is its own base (through {len(chain)} model(s))")
    _LOADING.chain = [*chain, key]
    try:
        return _load(spec, device, lazy)
    finally:
        _LOADING.chain = chain


def _load(spec: str, device: str | None, lazy: bool) -> Encoder:
    if spec == KNOWN_NAMES[0]:
        from .text import packaged_minilm_path

        return load_folder(Path(packaged_minilm_path()), device, lazy=lazy, name="all-MiniLM-L6-v2")
    for adapter in adapters():
        if spec.startswith(adapter.prefix):
            source = spec[len(adapter.prefix):]
            if adapter.origin == "hierarcaps" and adapter.prefix != "reco:" and Path(source).is_dir():
                check_model_folder(Path(source))
            return adapter.load(source, device)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_folder(path, device, lazy=lazy)
    check_prefix(spec)
    if path.suffix or spec.startswith((".", "/", "~")):
        raise ModelSpecError(f"model spec {spec!r}: no such folder")
    if "/" in spec:
        return _adapter("hf:").load(spec, device)
    raise ModelSpecError(f"model spec {spec!r} does not resolve; use minilm, "
                         + ", ".join(a.prefix for a in adapters()) + " a hub id (org/name) or a model folder")
