"""HierarCaps as Hugging Face `datasets`: in-memory loading and a parquet export with a dataset card.

``export`` writes ``data/<config>/*.parquet`` plus a README.md whose YAML ``configs:`` lets
``datasets.load_dataset(folder, config)`` load every config, ready for ``push_to_hub``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import HierarcapsError, ImagesUnavailableError
from .csvio import read_hierarchies
from .images import ImageStore
from .official import OFFICIAL_SPLITS, load_official, manifest
from .records import Hierarchy, content_checksum
from .splits import require_no_leakage

SPLIT_OF_CONFIG = {"test": "test", "test_expanded": "test", "train": "train"}
IMAGE_POLICIES = ("auto", "require", "skip")


def features() -> Any:
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "positive": datasets.Sequence(datasets.Value("string")),
        "negative": datasets.Sequence(datasets.Value("string")),
        "image_url": datasets.Value("string"),
        "image_file": datasets.Value("string"),
        "source": datasets.Value("string"),
        "split": datasets.Value("string"),
        "image": datasets.Image(),
    })


def config_records(config: str, train: str | os.PathLike[str] | None = None) -> list[Hierarchy]:
    """Records of a config: the shipped test files, or a training file checked for leakage."""
    if config in OFFICIAL_SPLITS:
        return load_official(config)
    if config == "train":
        if train is None:
            raise HierarcapsError("the train config needs --train PATH_OR_URL (the official file is not shipped)")
        records = read_hierarchies(train, split="train")
        kept, _ = require_no_leakage(records, file=str(train))
        return kept
    raise HierarcapsError(f"unknown config {config!r}; choose from test, test_expanded, train")


def resolve_images(records: Sequence[Hierarchy], policy: str, store: ImageStore) -> dict[str, Path]:
    """Image paths per the policy: ``skip`` none, ``require`` all (or fail), ``auto`` all if available."""
    if policy not in IMAGE_POLICIES:
        raise HierarcapsError(f"unknown image policy {policy!r}; choose from {', '.join(IMAGE_POLICIES)}")
    if policy == "skip":
        return {}
    try:
        return store.resolve(records)
    except ImagesUnavailableError:
        if policy == "require":
            raise
        return {}


def to_dataset(records: Sequence[Hierarchy], image_paths: dict[str, Path] | None = None, *,
               embed_images: bool = False) -> Any:
    """A ``datasets.Dataset`` of records; images referenced by path, or embedded as bytes for export."""
    import datasets

    image_paths = image_paths or {}

    def image_cell(record: Hierarchy) -> dict[str, Any] | None:
        path = image_paths.get(record.image_file or "")
        if path is None:
            return None
        if embed_images:
            return {"bytes": path.read_bytes(), "path": record.image_file}
        return {"bytes": None, "path": str(path)}

    columns: dict[str, list[Any]] = {name: [] for name in features()}
    for record in records:
        for key, value in record.to_dict().items():
            columns[key].append(value)
        columns["image"].append(image_cell(record))
    return datasets.Dataset.from_dict(columns, features=features())


def load(split: str | None = None, *, train: str | os.PathLike[str] | None = None,
         image_dir: str | os.PathLike[str] | None = None, images: str = "auto", download: bool = False) -> Any:
    """HierarCaps as ``datasets``: one split as a ``Dataset``, or all as a ``DatasetDict``.

    ``split`` is ``test``, ``test_expanded`` or ``train`` (needs ``train``, a path or URL of the official
    training file). Test images are attached when available (``images="auto"``).
    """
    import datasets

    store = ImageStore(image_dir, download=download)
    if split is not None:
        records = config_records(split, train)
        policy = images if split == "test" else "skip"
        return to_dataset(records, resolve_images(records, policy, store))
    configs = ["test", "test_expanded"] + (["train"] if train is not None else [])
    return datasets.DatasetDict({name: load(name, train=train, image_dir=image_dir, images=images,
                                            download=download) for name in configs})


def _dataset_card(configs: dict[str, dict[str, Any]]) -> str:
    info = manifest()
    yaml_configs = []
    for name in configs:
        yaml_configs.append(
            f"- config_name: {name}\n"
            + ("  default: true\n" if name == "test" else "")
            + f"  data_files:\n  - split: {SPLIT_OF_CONFIG[name]}\n    path: data/{name}/*.parquet"
        )
    table = "\n".join(f"| {name} | {meta['rows']:,} | {meta['images']:,} | `{meta['checksum']}` |"
                      for name, meta in configs.items())
    return f"""---
license: other
task_categories:
- zero-shot-image-classification
- image-to-text
language:
- en
pretty_name: HierarCaps
configs:
{chr(10).join(yaml_configs)}
---

# HierarCaps

Images paired with 4-tier caption hierarchies, generic to specific, each tier entailed by the next
(`animal => goat => goat on island => a goat eating leaves of a lemon tree on the island`), plus a negative
chain whose tier k+1 fits under positive tier k but contradicts positive tier k+1. A benchmark for the
visual-semantic hierarchy that image-text models learn.

| config | rows | rows with image | content checksum |
| --- | --- | --- | --- |
{table}

## Fields
- `id` (string): row id (the official `id` for the test set, the 0-based row index otherwise)
- `positive` (list of strings): tiers 1..4, generic to specific
- `negative` (list of strings or null): the negative chain (absent in the test config)
- `image_url`, `image_file`: the COCO val2014 image and its file name
- `image` (image or null): the embedded image when it was available at export time
- `source`, `split`: where the row came from

## Provenance and licence
Upstream: {info['upstream']['repository']} at commit `{info['upstream']['commit']}`.
{info['licence']}

Exported by hierarcaps {__version__}.

## Citation
{info['citation']}
"""


def export(out_dir: str | os.PathLike[str], *, configs: Sequence[str] = ("test", "test_expanded"),
           train: str | os.PathLike[str] | None = None, image_dir: str | os.PathLike[str] | None = None,
           images: str = "auto", download: bool = False, rows_per_shard: int = 10_000,
           overwrite: bool = False) -> Path:
    """Write the configs as parquet shards plus a dataset card into ``out_dir``, atomically.

    Images are embedded in the ``test`` config per ``images``; other configs reference images by URL.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise HierarcapsError(f"{out_dir} exists and is not empty (use --overwrite)")
    if train is not None and "train" not in configs:
        configs = (*configs, "train")
    store = ImageStore(image_dir, download=download)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    except OSError as exc:
        raise HierarcapsError(f"cannot write to {out_dir.parent}: {exc.strerror or exc}") from exc
    try:
        card_meta: dict[str, dict[str, Any]] = {}
        for name in configs:
            records = config_records(name, train)
            paths = resolve_images(records, images if name == "test" else "skip", store)
            dataset = to_dataset(records, paths, embed_images=True)
            shards = max(1, -(-len(records) // rows_per_shard))
            folder = staging / "data" / name
            folder.mkdir(parents=True)
            for index in range(shards):
                shard = dataset.shard(shards, index, contiguous=True)
                _write_parquet(shard, folder / f"{SPLIT_OF_CONFIG[name]}-{index:05d}-of-{shards:05d}.parquet")
            card_meta[name] = {"rows": len(records), "checksum": content_checksum(records),
                               "images": sum(1 for r in records if r.image_file in paths)}
        (staging / "README.md").write_text(_dataset_card(card_meta))
        staging.chmod(0o755)
        _replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_parquet(dataset: Any, path: Path) -> None:
    """Parquet with the `datasets` feature metadata, without a progress bar per shard."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        dataset.to_parquet(path)
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _remove_leftovers(out_dir: Path) -> None:
    """Staging and swapped-out folders of an earlier export to ``out_dir`` that was killed before cleaning up."""
    for leftover in [*out_dir.parent.glob(f".{out_dir.name}.staging-*"), out_dir.with_name(f".{out_dir.name}.old")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished folder into place; an existing target is swapped out, then removed."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
