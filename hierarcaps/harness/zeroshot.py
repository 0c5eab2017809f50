"""Zero-shot classification: the task where RECO's published gains are (Cars, CUB, Flowers, ...).

Classes are described by prompt templates (``a photo of a {}.``); each class's text embedding is the
normalised mean over templates; an image is assigned the class of highest cosine similarity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._io import regular_files
from ..errors import DataError
from ..models.base import Encoder, normalise

DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "an image of a {}.")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def image_folder(folder: str | Path) -> tuple[list[Any], np.ndarray, list[str]]:
    """Images in class subfolders: (paths, labels, class names from folder names, ``_`` read as space)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("no such folder", file=str(folder))
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError("no class subfolders", file=str(folder))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in regular_files(folder / name):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.parent == folder / name:
                paths.append(path)
                labels.append(label)
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class subfolders", file=str(folder))
    return paths, np.array(labels), [c.replace("_", " ") for c in classes]


def dataset_split(path: str, *, image_column: str = "image", label_column: str = "label",
                  split: str = "test") -> tuple[list[Any], np.ndarray, list[str]]:
    """A `datasets` dataset with an image column and a ClassLabel column (its names are the classes)."""
    import datasets

    data = datasets.load_from_disk(path) if Path(path).is_dir() else datasets.load_dataset(path, split=split)
    if isinstance(data, datasets.DatasetDict):
        data = data[split]
    names = data.features[label_column].names
    return list(data[image_column]), np.array(data[label_column]), names


MAX_TEMPLATE_BYTES = 2**20


def read_templates(path: str | Path) -> tuple[str, ...]:
    """Prompt templates, one per non-blank line, each with exactly one ``{}`` where the class name goes and no
    other brace (a ``{c}`` or ``{place}`` would otherwise reach the model as written)."""
    from .._io import read_bounded

    raw = read_bounded(path, MAX_TEMPLATE_BYTES, what="template file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", file=str(path)) from None
    templates = []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.count("{}") != 1 or line.replace("{}", "").count("{") or line.replace("{}", "").count("}"):
            raise DataError(f"a template holds exactly one {{}} where the class name goes and no other brace: "
                            f"{line.strip()[:80]!r}", file=str(path), row=row)
        templates.append(line)
    if not templates:
        raise DataError("no template line with one {} (e.g. 'a photo of a {}.')", file=str(path))
    return tuple(templates)


def class_embeddings(encoder: Encoder, class_names: list[str], templates: tuple[str, ...]) -> np.ndarray:
    prompts = [t.replace("{}", name) for name in class_names for t in templates]
    vectors = encoder.encode_text(prompts).reshape(len(class_names), len(templates), -1)
    return normalise(vectors.mean(axis=1))


def zero_shot(encoder: Encoder, images: list[Any], labels: np.ndarray, class_names: list[str],
              templates: tuple[str, ...] = DEFAULT_TEMPLATES, *, workers: int = 1) -> dict[str, float]:
    """Top-1 and top-5 accuracy (and per-class mean accuracy)."""
    if not encoder.has_images:
        raise DataError(f"{encoder.name} is a text-only model; zero-shot image classification needs an image-text "
                        "model (hf:, open_clip:, reco:)")
    image_emb = encoder.encode_image(images, workers=workers, progress=True)
    scores = image_emb @ class_embeddings(encoder, class_names, templates).T
    ranking = np.argsort(-scores, axis=1)
    top1 = ranking[:, 0] == labels
    top5 = (ranking[:, :5] == labels[:, None]).any(axis=1)
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    return {"top1": float(top1.mean()), "top5": float(top5.mean()), "mean_per_class": float(np.mean(per_class)),
            "images": len(images), "classes": len(class_names)}
