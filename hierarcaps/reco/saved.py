"""A trained RECO model on disk: ``reco.json`` (the base encoder, the memory, the fusion and its sides, the
selection's record) beside ``fusion.safetensors`` (a learned fusion's weights), read back into modules."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ModelSpecError
from ..models.folders import read_json_object
from .fusion import KINDS, STARTS, FusionConfig, build_fusion

INFO_FILE = "reco.json"
WEIGHTS_FILE = "fusion.safetensors"


def side_configs(info: dict[str, Any]) -> dict[str, FusionConfig]:
    """Each refined side's fusion: the shared settings, with the side's own start where the model records one
    (a learned fusion starts as the best training-free option, which may differ by side)."""
    config = FusionConfig(**{"start": "query", **info["fusion"]})      # older models started as the query
    starts = info.get("starts") or {}
    return {side: dataclasses.replace(config, start=starts.get(side, config.start)) for side in info["sides"]}


def load_fusion(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(info, {side: module}) of a trained RECO folder, modules in eval mode; a folder that is not one, or whose
    files disagree, is one line naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / INFO_FILE
    if not path.exists():
        raise ModelSpecError(f"{folder} is not a trained RECO model (no {INFO_FILE})")
    info = read_json_object(path, what="RECO model description")
    problem = reco_info_problem(info)
    if problem:
        raise ModelSpecError(f"{path}: {problem}")
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = load_file(weights_path) if info["fusion"]["kind"] != "mean" and info["sides"] else {}
        modules = {}
        for side, config in side_configs(info).items():
            module = build_fusion(config)
            module.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"{side}.")})
            modules[side] = module.eval()
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ModelSpecError(f"{weights_path}: does not hold the fusion reco.json describes "
                             f"({' '.join(str(exc).split())[:160]})") from None
    return info, modules


def reco_info_problem(info: dict[str, Any]) -> str | None:
    """Why a reco.json cannot describe a model, or None."""
    fields = {f.name for f in dataclasses.fields(FusionConfig)}
    if not isinstance(info.get("base"), str) or not isinstance(info.get("memory"), str):
        return "needs the base encoder's spec and the memory's folder (base, memory)"
    fusion = info.get("fusion")
    if not isinstance(fusion, dict) or not set(fusion) <= fields or fusion.get("kind") not in KINDS \
            or fusion.get("start", "query") not in STARTS:
        return f"fusion must be an object with {', '.join(sorted(fields))} (kind one of {', '.join(KINDS)})"
    sides = info.get("sides")
    if not isinstance(sides, list) or not set(sides) <= {"image", "text"}:
        return "sides must be a list of image and text"
    starts = info.get("starts", {})
    if not isinstance(starts, dict) or not set(starts) <= {"image", "text"} or not set(starts.values()) <= set(STARTS):
        return f"starts must map sides to one of {', '.join(STARTS)}"
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("k"), int) or config["k"] < 1:
        return "config must hold k, the number of neighbours fused"
    return None
