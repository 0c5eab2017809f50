"""Shared fixtures: the offline copy of the official data, an isolated cache, small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))   # test helper modules (tiny_generation_models, ...)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch takes its share of the cores instead of all of them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)


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


@pytest.fixture(scope="session")
def expanded_records(shared_dir: Path):
    from hierarcaps.data.csvio import read_hierarchies

    return read_hierarchies(shared_dir / "hierarcaps_test_expanded.csv.gz")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory, expanded_records) -> Path:
    from tiny_generation_models import build_tiny_llama, build_tiny_nli

    folder = tmp_path_factory.mktemp("tiny-generation")
    from hierarcaps.generation.prompts import builtin_folder

    prompts = [p.read_text() for p in builtin_folder().glob("*")]
    build_tiny_llama(folder / "llm", [t for r in expanded_records[:2000] for t in r.positive] + prompts)
    build_tiny_nli(folder / "nli")
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight transformers CLIP of the ``tiny`` preset (weights + processor), saved as ``tiny-clip``."""
    from hierarcaps.models.random_models import save_random_hf_clip

    return save_random_hf_clip(tmp_path_factory.mktemp("models") / "tiny-clip", "tiny", seed=0)
