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
from .._io import directory_lock
from ..errors import HierarcapsError, ImagesUnavailableError
from ..outputs import Journal, mark_folder, owner_of, recover
from .csvio import read_hierarchies
from .images import DEFAULT_IMAGE_SOURCE, ImageStore, portable_bytes
from .official import OFFICIAL_SPLITS, load_official, manifest
from .records import Hierarchy, content_checksum
from .splits import require_no_leakage

EXPORT_KIND = "dataset export"

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
            return {"bytes": portable_bytes(path), "path": record.image_file}
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
    training file). Test images are attached when available (``images="auto"``); an ``image_dir`` that does
    not exist is an error, not a dataset without images.
    """
    import datasets

    if image_dir is not None and not Path(image_dir).is_dir():
        raise HierarcapsError(f"image folder {image_dir} does not exist")
    store = ImageStore(image_dir, download=download)
    if split is not None:
        records = config_records(split, train)
        policy = images if split == "test" else "skip"
        return to_dataset(records, resolve_images(records, policy, store))
    configs = ["test", "test_expanded"] + (["train"] if train is not None else [])
    return datasets.DatasetDict({name: load(name, train=train, image_dir=image_dir, images=images,
                                            download=download) for name in configs})


SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
BIBTEX = """@inproceedings{alper2024hierarcaps,
  title     = {Emergent Visual-Semantic Hierarchies in Image-Text Representations},
  author    = {Alper, Morris and Averbuch-Elor, Hadar},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}"""
CONFIG_ORIGINS = {
    "test": "the curated 1K test set: one human-checked 4-tier hierarchy per COCO val2014 image (1,000 images).",
    "test_expanded": "23,479 uncurated hierarchies over 5,000 COCO val2014 images (a superset of the test "
                     "images), generated by the upstream LLM + NLI pipeline from COCO captions, with negative "
                     "chains. Not for training: it shares images and captions with the test set.",
    "train": "the official training file (Conceptual Captions captions, LLM + NLI generated, text only), "
             "leakage-checked against the test set before export.",
}


def _size_category(rows: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "1M<n<10M")


def split_info(config: str, dataset: Any, files: Sequence[Path]) -> Any:
    """What the Hub records of a config: its features and its split's size in examples and in bytes (the
    in-memory Arrow size, as `datasets` counts it), plus the size of the files on disk."""
    import datasets

    num_bytes = dataset.data.nbytes
    split = SPLIT_OF_CONFIG[config]
    return datasets.DatasetInfo(
        features=features(), dataset_size=num_bytes, download_size=sum(f.stat().st_size for f in files),
        splits=datasets.SplitDict({split: datasets.SplitInfo(split, num_bytes=num_bytes,
                                                             num_examples=dataset.num_rows)}))


def card_metadata(configs: dict[str, dict[str, Any]]) -> str:
    """The card's YAML header, written by the Hub's own tooling (``DatasetCardData`` and `datasets`'
    ``DatasetInfosDict``) so that its ``configs`` and ``dataset_info`` are in the syntax the Hub reads."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    rows = sum(meta["rows"] for meta in configs.values())
    data = DatasetCardData(
        license="other", license_name="hierarcaps-coco-terms", license_link=manifest()["upstream"]["repository"],
        pretty_name="HierarCaps", language=["en"], multilinguality="monolingual",
        size_categories=[_size_category(rows)], source_datasets=["extended|coco"],
        annotations_creators=["machine-generated", "expert-generated"],
        language_creators=["found", "machine-generated"],
        task_categories=["image-to-text", "text-to-image", "feature-extraction"],
        tags=["visual-semantic-hierarchy", "image-text-retrieval", "textual-entailment", "clip", "benchmark"],
        configs=[{"config_name": name, **({"default": True} if name == "test" else {}),
                  "data_files": [{"split": SPLIT_OF_CONFIG[name], "path": f"data/{name}/*.parquet"}]}
                 for name in configs])
    DatasetInfosDict({name: meta["info"] for name, meta in configs.items()}).to_dataset_card_data(data)
    return data.to_yaml()


def _dataset_card(configs: dict[str, dict[str, Any]]) -> str:
    info = manifest()
    table = "\n".join(f"| {name} | {meta['rows']:,} | {meta['images']:,} | `{meta['checksum']}` |"
                      for name, meta in configs.items())
    origins = "\n".join(f"- `{name}`: {CONFIG_ORIGINS[name]}" for name in configs)
    embedded = configs.get("test", {}).get("images", 0)
    images_note = (f"The `test` config embeds its {embedded:,} images: the protocol's pixels, upstream's "
                   "256x256 letterboxed thumbnails of the COCO val2014 originals (`assets/test_imgs`), each "
                   "verified against its shipped SHA-256. Scores on the full-size COCO originals are not "
                   "comparable with the protocol's." if embedded else
                   "No images are embedded in this export (it was made with `--images skip`): the `image` column "
                   "is empty; `image_url` names each COCO val2014 original, and the protocol's 256x256 "
                   "thumbnails are in the upstream repository's `assets/test_imgs`.")
    upstream = info["upstream"]
    return f"""---
{card_metadata(configs)}
---

# HierarCaps

Images paired with 4-tier caption hierarchies, generic to specific, each tier entailed by the next
(`animal => goat => goat on island => a goat eating leaves of a lemon tree on the island`), plus a negative
chain whose tier k+1 fits under positive tier k but contradicts positive tier k+1. A benchmark for the
visual-semantic hierarchy that image-text models learn: a model should place generic captions near the
embedding of the empty text (the root) and specific ones further out along the same direction.

| config | rows | rows with image | content checksum |
| --- | --- | --- | --- |
{table}

## How the configs were made
{origins}

## Images
{images_note}

## Fields
- `id` (string): row id (the official `id` for the test set, the 0-based row index otherwise)
- `positive` (list of strings): tiers 1..4, generic to specific
- `negative` (list of strings or null): the negative chain (absent in the test config)
- `image_url`, `image_file`: the COCO val2014 original and its file name
- `image` (image or null): the embedded image (see Images)
- `source`, `split`: where the row came from

## Use
```python
import datasets
test = datasets.load_dataset("path/to/this/folder", "test", split="test")
```
Score a model with the reference protocol (50 radius thresholds, root = the empty text) using
`hierarcaps evaluate`; the protocol and its caption-length baselines are described in the package.

## Licence
Captions derive from MS-COCO captions (CC BY 4.0) and, for `train`, Conceptual Captions; see the upstream
repository ({upstream['repository']}) for the hierarchies' terms. Images are MS-COCO val2014 images, each
under its Flickr licence (see cocodataset.org/#termsofuse); they are not relicensed here.
{info['licence']}

Upstream commit: `{upstream['commit']}`. Exported by hierarcaps {__version__}.

## Citation
{info['citation']}

```bibtex
{BIBTEX}
```
"""


def export(out_dir: str | os.PathLike[str], *, configs: Sequence[str] = ("test", "test_expanded"),
           train: str | os.PathLike[str] | None = None, image_dir: str | os.PathLike[str] | None = None,
           images: str = "require", download: bool = False, rows_per_shard: int = 10_000,
           overwrite: bool = False, image_source: str = DEFAULT_IMAGE_SOURCE) -> Path:
    """Write the configs as parquet shards plus a dataset card into ``out_dir``, atomically.

    Images are embedded in the ``test`` config per ``images`` (``require`` by default: an export without them
    must say ``skip``, and its card says so); other configs reference images by URL.
    """
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    if train is not None and "train" not in configs:
        configs = (*configs, "train")
    store = ImageStore(image_dir, download=download, source=image_source)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HierarcapsError(f"cannot write to {out_dir.parent}: {exc.strerror or exc}") from exc
    with directory_lock(out_dir.parent, what=f"the export {out_dir}"):
        recover(out_dir.parent, _journal_name(out_dir))
        _check_target(out_dir, overwrite)
        _remove_leftovers(out_dir)
        _export_into(out_dir, configs, train, images, store, rows_per_shard)
    return out_dir


def _check_target(out_dir: Path, overwrite: bool) -> None:
    """An export goes into a new or empty folder, or (with ``overwrite``) replaces an earlier export; a folder
    this command did not write is never replaced."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise HierarcapsError(f"{out_dir}: not a folder (a link or a file); give a new or empty folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if owner_of(out_dir) != EXPORT_KIND:
        raise HierarcapsError(f"{out_dir}: not empty and not written by `hierarcaps export`; nothing there was "
                              "changed: give a new or empty folder")
    if not overwrite:
        raise HierarcapsError(f"{out_dir} holds an earlier export (use --overwrite to replace it)")


def _journal_name(out_dir: Path) -> str:
    return f".{out_dir.name}.journal.json"


def _export_into(out_dir: Path, configs: Sequence[str], train: str | os.PathLike[str] | None, images: str,
                 store: ImageStore, rows_per_shard: int) -> None:
    """Write the export into a staging folder beside ``out_dir``, then move it into place through a journal."""
    try:
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
            files = [folder / f"{SPLIT_OF_CONFIG[name]}-{index:05d}-of-{shards:05d}.parquet" for index in range(shards)]
            for index, file in enumerate(files):
                _write_parquet(dataset.shard(shards, index, contiguous=True), file)
            card_meta[name] = {"rows": len(records), "checksum": content_checksum(records),
                               "images": sum(1 for r in records if r.image_file in paths),
                               "info": split_info(name, dataset, files)}
        (staging / "README.md").write_text(_dataset_card(card_meta))
        mark_folder(staging, EXPORT_KIND)
        staging.chmod(0o755)
        old = f".{out_dir.name}.old"
        swap = [("rename", out_dir.name, old)] if out_dir.exists() else []
        Journal(out_dir.parent, f"export to {out_dir}", [*swap, ("rename", staging.name, out_dir.name),
                                                         ("remove", old)], name=_journal_name(out_dir)).run()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    """Staging folders of an earlier export to ``out_dir`` killed before its journal was written (an export
    killed after it is finished by ``recover`` first), and a swapped-out folder such a finished export left."""
    for leftover in [*out_dir.parent.glob(f".{out_dir.name}.staging-*"), out_dir.with_name(f".{out_dir.name}.old")]:
        shutil.rmtree(leftover, ignore_errors=True)
