"""open_clip models: ``NAME[/PRETRAINED]`` (a tag or a weights file), ``hf-hub:ORG/REPO``, ``local-dir:DIR``,
or a model config JSON (registered with ``add_model_config``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import PICKLE_SUFFIXES
from ..errors import ModelSpecError
from .folders import check_model_folder
from .torch_utils import TorchEncoder, pick_device

TEXT_TOWER = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection", "text")


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``ViT-B-32/openai`` -> (ViT-B-32, openai); ``hf-hub:x/y`` -> (hf-hub:x/y, None); ``cfg.json/w.pt`` too."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    name, _, pretrained = spec.partition("/")
    if name.endswith(".json") or Path(spec).suffix == ".json":
        return spec, None
    return name, pretrained or None


def shipped_model_names() -> list[str]:
    """open_clip's architecture names, read from its config folder without importing it (and torch)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError("open_clip is not installed (pip install 'hierarcaps[eval]')")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))


def check_known_name(name: str, pretrained: str | None) -> None:
    """Fail at once, with the closest names, on an architecture or weights tag open_clip does not know: the
    architecture before open_clip (and torch) is even imported."""
    import difflib

    if name.startswith(("hf-hub:", "local-dir:")) or name.endswith(".json"):
        return
    models = shipped_model_names()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=5, cutoff=0.5)
        raise ModelSpecError(f"open_clip has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close
                                                                   else " (`open_clip.list_models()` lists them)"))
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained and not Path(pretrained).exists() and pretrained not in tags:
        close = difflib.get_close_matches(pretrained, tags, n=5, cutoff=0.3) or tags[:5]
        raise ModelSpecError(f"open_clip model {name!r} has no pretrained weights {pretrained!r}"
                             + (f"; did you mean {', '.join(close)}?" if close else ""))


def check_local_weights(name: str, pretrained: str | None) -> None:
    """A local folder or weights file must hold safetensors: open_clip unpickles anything else."""
    if name.startswith("local-dir:"):
        check_model_folder(Path(name.removeprefix("local-dir:")))
    if pretrained and Path(pretrained).exists() and Path(pretrained).suffix in PICKLE_SUFFIXES:
        raise ModelSpecError(f"open_clip weights {pretrained}: a pickle file, which is never loaded (unpickling runs "
                             "code); save them as .safetensors")


class OpenClipEncoder(TorchEncoder):
    """An open_clip model with the tokenizer and eval transform that travel with it."""

    spec_prefix = "open_clip:local-dir:"

    def __init__(self, spec: str, *, device: str | None = None, pretrained: str | None = None) -> None:
        name, tag = parse_open_clip_spec(spec)
        pretrained = pretrained or tag
        check_known_name(name, pretrained)
        check_local_weights(name, pretrained)
        import open_clip

        self.model_config: dict[str, Any] | None = None
        if name.endswith(".json"):
            config = Path(name)
            if not config.exists():
                raise ModelSpecError(f"open_clip config {name} not found")
            open_clip.add_model_config(config)
            self.model_config = json.loads(config.read_text())
            name = config.stem
        self.device = pick_device(device)
        try:
            model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                        device=self.device)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, OSError, ValueError, FileNotFoundError) as exc:
            raise ModelSpecError(f"cannot load open_clip model {spec!r}: {exc}") from None
        self.model = model.eval()
        self.transform = transform
        self.open_clip_name = name
        self.name = f"open_clip:{name}" + (f"/{pretrained}" if pretrained else "")
        self.revision = pretrained

    def text_features(self, texts: list[str]) -> Any:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def image_transform(self, image: Any) -> Any:
        return self.transform(image)

    def image_features(self, pixels: Any) -> Any:
        return self.model.encode_image(pixels)

    def text_parameters(self) -> list[Any]:
        params = []
        for name in TEXT_TOWER:
            part = getattr(self.model, name, None)
            if part is None:
                continue
            params.extend(part.parameters() if hasattr(part, "parameters") else [part])
        return params

    def save(self, folder: str | Path) -> None:
        """The open_clip local-dir layout: open_clip_config.json + open_clip_model.safetensors."""
        import open_clip
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_cfg = self.model_config or open_clip.get_model_config(self.open_clip_name)
        visual = self.model.visual
        preprocess = {"mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
                      "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
                      "image_size": model_cfg["vision_cfg"]["image_size"]}
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess},
                                                                 indent=2))
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, folder / "open_clip_model.safetensors")

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": type(self.tokenizer).__name__,
                "context_length": getattr(self.tokenizer, "context_length", None), "transform": repr(self.transform)}
