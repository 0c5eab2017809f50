"""Where memory items come from: a hierarchy file with images, a CSV of images and captions, a `datasets`
dataset, or precomputed embeddings.

Every item has a group, the unit that must never retrieve itself: its image file for hierarchy files, the
``group`` column (else the image) for CSVs and datasets, the ``groups`` array (else the id) for embeddings.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .._io import check_npz_inflation
from ..data.csvio import read_hierarchies
from ..data.images import DEFAULT_IMAGE_SOURCE, ImageStore
from ..data.tables import header_of, records
from ..errors import DataError
from .memory import Memory, MemoryItem
from .objectives import Pairs


def from_hierarchies(path: str, *, image_dir: str | None = None, download: bool = False,
                     image_source: str = DEFAULT_IMAGE_SOURCE) -> list[MemoryItem]:
    """One item per row: its image and its most specific caption, grouped by image."""
    records = read_hierarchies(path, n_tiers=None)
    paths = ImageStore(image_dir, download=download, source=image_source).resolve(records)
    return [MemoryItem(f"{Path(path).name}:{r.id}", r.positive[-1], str(paths[r.image_file]), Path(path).name,
                       group=r.image_file) for r in records if r.image_file]


def from_csv(path: str) -> list[MemoryItem]:
    """A table (CSV, TSV or parquet) with columns ``image`` (path or URL) and ``caption``, and optionally ``id``,
    ``group`` and ``label``."""
    items = []
    for number, row in records(path, ("image", "caption")):
        for column in ("image", "caption"):
            if not row.get(column):
                raise DataError("empty", file=path, row=number, field=column)
        items.append(MemoryItem(str(row.get("id") or f"{Path(path).name}:{number - 1}"), str(row["caption"]),
                                str(row["image"]), Path(path).name, group=str(row.get("group") or row["image"]),
                                label=str(row.get("label") or "")))
    return items


def from_dataset(path: str, *, image_column: str = "image", text_column: str = "caption",
                 split: str = "train") -> list[MemoryItem]:
    """A `datasets` dataset (a saved folder or a loadable name): PIL images and captions."""
    import datasets

    try:
        data = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError):
        data = datasets.load_dataset(path, split=split)
    if isinstance(data, datasets.DatasetDict):
        data = data[split]
    return [MemoryItem(f"{Path(path).name}:{i}", str(row[text_column]), row[image_column], Path(path).name,
                       group=str(row.get("group") or "")) for i, row in enumerate(data)]


def from_embeddings(path: str) -> tuple[np.ndarray, np.ndarray, list[MemoryItem]]:
    """An .npz with ``image`` and ``text`` (n, d) arrays and optionally ``ids``, ``captions`` and ``groups``."""
    try:
        check_npz_inflation(path)
        with np.load(path, allow_pickle=False) as data:
            missing = {"image", "text"} - set(data.files)
            if missing:
                raise DataError(f"no {' or '.join(sorted(missing))} array (an .npz memory source holds image and "
                                "text, and optionally ids, captions, groups)", file=path)
            image, text = data["image"], data["text"]
            names = [f"{Path(path).name}:{i}" for i in range(len(image))]
            ids = data["ids"].tolist() if "ids" in data.files else names
            captions = data["captions"].tolist() if "captions" in data.files else [""] * len(image)
            groups = data["groups"].tolist() if "groups" in data.files else [""] * len(image)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"not a readable .npz without unpickling ({' '.join(str(exc).split())[:120]})",
                        file=path) from None
    for name, array in (("image", image), ("text", text)):
        if array.ndim != 2 or array.dtype.kind != "f" or array.shape[0] != image.shape[0]:
            raise DataError(f"{array.dtype} array of shape {array.shape}; expected (n, dim) floats, n the same for "
                            "image and text", file=path, field=name)
    for name, values in (("ids", ids), ("captions", captions), ("groups", groups)):
        if len(values) != len(image):
            raise DataError(f"{len(values)} entries for {len(image)} rows", file=path, field=name)
    return image, text, [MemoryItem(str(i), str(c), None, Path(path).name, group=str(g))
                         for i, c, g in zip(ids, captions, groups)]


def load_items(source: str, **options: Any) -> list[MemoryItem]:
    """Items of a source by its kind: a ``datasets`` folder, a table with image and caption columns, or a
    hierarchy file."""
    path = Path(source)
    if path.is_dir():
        return from_dataset(source, **{k: v for k, v in options.items() if k in ("image_column", "text_column")})
    if {"image", "caption"} <= set(header_of(path)):
        return from_csv(source)
    return from_hierarchies(source, **{k: v for k, v in options.items()
                                       if k in ("image_dir", "download", "image_source")})


def embedded_pairs(source: str, encoder: Any, **options: Any) -> Pairs:
    """Training pairs from any source, embedded by ``encoder`` where needed: copies of a caption share a key,
    and a ``label`` column (CSV) gives the supervised objective its classes, their names embedded too."""
    if source.endswith(".npz"):
        image, text, items = from_embeddings(source)
    else:
        items = load_items(source, **options)
        text = encoder.encode_text([i.caption for i in items])
        image = encoder.encode_image([i.image for i in items])
    keys = [i.caption for i in items] if all(i.caption for i in items) else None
    labels = [i.label for i in items] if items and all(i.label for i in items) else None
    names = sorted(set(labels or []))
    vectors = dict(zip(names, encoder.encode_text(names))) if names else None
    return Pairs(image, text, [i.group_key() for i in items], keys, labels, vectors)


def embedded_vectors(source: str, encoder: Any, **options: Any) -> dict[str, np.ndarray]:
    """Image and text vectors of any memory source (an .npz as it is, others embedded by ``encoder``)."""
    if source.endswith(".npz"):
        image, text, _ = from_embeddings(source)
        return {"image": image, "text": text}
    items = load_items(source, **options)
    return {"image": encoder.encode_image([i.image for i in items]), "text": encoder.encode_text([i.caption
                                                                                                 for i in items])}


def memory_pairs(memory: Memory) -> Pairs:
    """A memory's own items as training pairs (each its own group's; copies of a caption share a key)."""
    captions = memory.meta.column("caption").to_pylist()
    keys = captions if all(captions) else None
    return Pairs(memory.vectors["image"], memory.vectors["text"], memory.groups, keys)
