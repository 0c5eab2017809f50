"""HierarCaps: visual-semantic hierarchy as a benchmark. ``import hierarcaps`` stays light: heavy stacks
(torch, transformers, open_clip, datasets) load only inside the function that needs them."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Hierarchy": "hierarcaps.data.records",
    "read_hierarchies": "hierarcaps.data.csvio",
    "write_csv": "hierarcaps.data.csvio",
    "load_official": "hierarcaps.data.official",
    "offline_train_split": "hierarcaps.data.splits",
    "load": "hierarcaps.data.hf",
    "export": "hierarcaps.data.hf",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hierarcaps' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_LAZY, "__version__"])


__all__ = [*_LAZY, "__version__"]
