"""A RECO model as an Encoder: the frozen base encoder, then retrieval and fusion on the chosen sides.

Spec: ``reco:<folder>`` where the folder was written by the fusion trainer (reco.json + fusion.safetensors);
``reco:<folder>#image`` or ``#text`` refines one side only; ``reco:<folder>?memory=<other memory>`` swaps the
memory at scoring time (built with the same base encoder), as in RECO's memory-swap experiment.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelSpecError
from ..models.base import Encoder
from ..models.image_batches import ImageBatches
from .memory import Memory


def refine(modules: dict[str, Any], memory: Memory, queries: np.ndarray, side: str, k: int, *,
           fuse: str = "cross", cross_modal_search: bool = False, batch_size: int = 1024) -> np.ndarray:
    """Refined unit vectors for ``queries`` of modality ``side`` (unchanged if that side has no module). Nothing
    is excluded from the search: items of an evaluation set are removed from the memory when it is built."""
    import torch

    if side not in modules:
        return queries
    out = np.empty_like(queries, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(queries), batch_size):
            chunk = np.asarray(queries[start:start + batch_size], dtype=np.float32)
            neighbours = memory.neighbours(chunk, side, k, fuse=fuse, cross_modal_search=cross_modal_search)
            out[start:start + len(chunk)] = modules[side](torch.from_numpy(chunk), torch.from_numpy(neighbours)).numpy()
    return out


class RecoEncoder(Encoder):
    """A trained RECO model (frozen base + memory + fusion); ?memory=OTHER, #image or #text.

    Registered under the ``reco:`` prefix through the ``hierarcaps.encoders`` entry point (``pyproject.toml``),
    as any other package's adapter is, so ``models/`` never names this upper layer."""

    EXAMPLE = "reco:runs/reco"

    def __init__(self, spec: str, *, device: str | None = None) -> None:
        from urllib.parse import parse_qs

        from ..models.registry import load_encoder
        from .saved import load_fusion

        spec, _, only = spec.partition("#")
        folder, _, query = spec.partition("?")
        options = {key: values[-1] for key, values in parse_qs(query).items()}
        unknown = set(options) - {"memory"}
        if unknown or only not in ("", "image", "text"):
            raise ModelSpecError(f"reco:{spec}: options are ?memory=FOLDER and #image or #text")
        self.folder = Path(folder)
        self.info, modules = load_fusion(self.folder)
        self.modules = {side: m for side, m in modules.items() if not only or side == only}
        self.base = load_encoder(self.info["base"], device=device, lazy=True)
        self.memory = Memory(options.get("memory") or self.folder / self.info["memory"])
        if self.memory.manifest.get("dim") != self.info["fusion"]["dim"]:
            raise ModelSpecError(f"memory {self.memory.folder} has dimension {self.memory.manifest.get('dim')}; "
                                 f"the fusion modules expect {self.info['fusion']['dim']}")
        self.name = f"reco:{self.folder.name}" + (f"#{only}" if only else "")
        self.revision = self.info.get("run_hash")
        self.k = self.info["config"]["k"]

    def _refine(self, vectors: np.ndarray, side: str) -> np.ndarray:
        config = self.info["config"]
        return refine(self.modules, self.memory, vectors, side, self.k, fuse=config.get("fuse", "cross"),
                      cross_modal_search=bool(config.get("cross_modal_search", False)))

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        return self._refine(self.base.encode_text(texts, batch_size=batch_size, progress=progress), "text")

    def _embed_images(self, images: list[Any] | ImageBatches, *, batch_size: int, workers: int,
                      progress: bool) -> np.ndarray:
        vectors = self.base.encode_image(images, batch_size=batch_size, workers=workers, progress=progress)
        return self._refine(vectors, "image")

    @property
    def has_images(self) -> bool:  # type: ignore[override]
        return self.base.has_images

    def numerics(self) -> str:
        return self.base.numerics()

    @property
    def load_seconds(self) -> float:  # type: ignore[override]
        return self.base.load_seconds

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.base.fingerprint().encode())
        digest.update(json.dumps(sorted(self.modules)).encode())
        for name in ("fusion.safetensors", "reco.json"):
            path = self.folder / name
            if path.exists():
                digest.update(path.read_bytes())
        digest.update(self.memory.content_hash().encode())
        return "reco:" + digest.hexdigest()[:32]

    def parameter_count(self) -> int | None:
        base = self.base.metadata().get("parameters") or 0
        return base + sum(p.numel() for m in self.modules.values() for p in m.parameters())

    def metadata(self) -> dict[str, Any]:
        selection = self.info.get("selection") or {}
        return {**super().metadata(), "base": self.info["base"], "memory_items": len(self.memory),
                "memory_content_hash": self.memory.content_hash(), "refined_sides": sorted(self.modules),
                "fusion": self.info["fusion"]["kind"], "fusion_choice": selection.get("why", "")}
