"""Shared fixtures: the offline copy of the official data, an isolated cache, small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("HIERARCAPS_SHARED", REPO.parent / "shared" / "hierarcaps"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache, so nothing leaks between tests or into ~/.cache."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("HIERARCAPS_CACHE", str(cache))
    monkeypatch.delenv("HIERARCAPS_IMAGE_DIR", raising=False)
    monkeypatch.delenv("HIERARCAPS_IMAGE_MIRROR", raising=False)
    return cache


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_data_dir()
    if not (path / "hierarcaps_test.csv").exists():
        pytest.skip(f"offline copy of the official files not found at {path}")
    return path


@pytest.fixture(scope="session")
def test_image_dir(shared_dir: Path) -> Path:
    images = shared_dir / "images"
    if not images.is_dir() or len(list(images.glob("*.jpg"))) < 1000:
        pytest.skip(f"the 1,000 test images are not at {images}")
    return images
