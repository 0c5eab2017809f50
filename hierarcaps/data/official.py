"""The official HierarCaps files shipped inside the package, checked against their manifest."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from .._io import sha256_file
from ..errors import DataError
from .csvio import read_hierarchies
from .records import Hierarchy

OFFICIAL_SPLITS = {"test": "hierarcaps_test.csv", "test_expanded": "hierarcaps_test_expanded.csv.gz"}
TRAIN_URL_HINT = ("the official training set (hierarcaps_train.csv.gz, >70K rows) is not shipped: "
                  "pass its path or URL")


def official_dir() -> Path:
    return Path(str(resources.files("hierarcaps.data") / "official"))


@functools.cache
def manifest() -> dict:
    """Provenance and SHA-256 of every shipped file (see ``official/MANIFEST.json``)."""
    return json.loads((official_dir() / "MANIFEST.json").read_text())


def official_path(split: str) -> Path:
    """Path of a shipped official file, verified against the manifest once per process."""
    if split not in OFFICIAL_SPLITS:
        raise DataError(f"unknown official split {split!r}; shipped: {', '.join(OFFICIAL_SPLITS)}. "
                        + (TRAIN_URL_HINT if split == "train" else ""))
    path = official_dir() / OFFICIAL_SPLITS[split]
    _verify(path)
    return path


@functools.cache
def _verify(path: Path) -> None:
    expected = manifest()["files"][path.name]["sha256"]
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"shipped file is corrupted: SHA-256 {actual}, manifest says {expected}", file=str(path))


@functools.cache
def _load(split: str) -> tuple[Hierarchy, ...]:
    return tuple(read_hierarchies(official_path(split), split=split, source=f"hierarcaps/{split}"))


def load_official(split: str) -> list[Hierarchy]:
    """The records of a shipped split (``test`` or ``test_expanded``); parsed once per process."""
    return list(_load(split))


@functools.cache
def test_image_sha256() -> dict[str, str]:
    """File name -> SHA-256 of the 1,000 official test images."""
    lines = (official_dir() / "test_images.sha256").read_text().splitlines()
    return {name: digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}
