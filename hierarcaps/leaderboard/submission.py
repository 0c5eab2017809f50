"""The submission format: ``submission.json`` plus the embeddings of every test text, image and the root.

Embeddings come in a format that cannot carry code:
- ``embeddings.npz`` (read with ``allow_pickle=False``) or ``embeddings.safetensors`` with arrays ``root`` (d,),
  ``text`` (T, d), ``image`` (M, d) and optionally ``text_radii`` (T,), their rows ordered as
  ``text_ids.txt`` / ``image_ids.txt`` (one id per line);
- or ``embeddings.parquet`` with columns ``kind`` (root/text/image), ``id``, ``embedding`` (list of floats)
  and optionally ``radius``.
Text ids are ``<row id>-<tier>`` (``0-1`` ... ``999-4``); image ids are file names without extension.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import jsonfile
from ..data.official import load_official
from ..data.records import Hierarchy, content_checksum
from ..fields import bounded, section_schema
from ..metrics.hierarchy import PROTOCOL
from ..outputs import write_files
from ..results import MAX_PARAMETERS, MAX_TEXT_CHARS

SUBMISSION_FILE = "submission.json"
EMBEDDING_FILES = ("embeddings.npz", "embeddings.safetensors", "embeddings.parquet")
ID_FILES = ("text_ids.txt", "image_ids.txt")

@dataclasses.dataclass(frozen=True)
class SubmittedModel:
    """Who is submitted (its name and revision are held to ``names.name_problem``: a safe folder name)."""

    name: str
    revision: str
    parameters: int = bounded(description="0 when unknown", low=0, high=MAX_PARAMETERS)
    licence: str = bounded(max_length=MAX_TEXT_CHARS)
    link: str = bounded(description="an http(s) link, or empty", max_length=MAX_TEXT_CHARS)
    training_data: str = bounded(max_length=MAX_TEXT_CHARS)


@dataclasses.dataclass(frozen=True)
class SubmissionDocument:
    """submission.json: the model, the attestation, and what it was scored against."""

    model: SubmittedModel
    test_set_not_used_for_training_or_tuning: bool
    protocol: str
    dataset_checksum: str
    text_radii: bool
    modalities: list[Literal["text", "image"]] | None = bounded(None, min_items=1, max_items=2)


def submission_schema() -> dict[str, Any]:
    """The JSON schema of submission.json, derived from its dataclasses (open: other keys are kept)."""
    return {"$ref": "#/$defs/SubmissionDocument",
            "$defs": {cls.__name__: section_schema(cls, open_section=True)
                      for cls in (SubmissionDocument, SubmittedModel)}}


def text_ids(records: list[Hierarchy]) -> list[str]:
    return [f"{r.id}-{k}" for r in records for k in range(1, r.n_tiers + 1)]


def image_ids(records: list[Hierarchy]) -> list[str]:
    return list(dict.fromkeys(Path(r.image_file or r.id).stem for r in records))


TEMPLATE_MODEL = {"name": "<model name>", "revision": "<revision>", "parameters": 0, "licence": "<licence>",
                  "link": "<https:// link to the model, or empty>", "training_data": "<what it was trained on>"}
EARLIER_TEMPLATE = {"name": "my-model", "link": "https://example.org/my-model", "training_data": "describe it"}
PLACEHOLDERS = {key: {value, EARLIER_TEMPLATE.get(key, value)} for key, value in TEMPLATE_MODEL.items()
                if isinstance(value, str)}
"""Template values (this one's and earlier ones') that an entry may not keep."""


def example_submission(records: list[Hierarchy], **model: Any) -> dict[str, Any]:
    """The template's submission.json: placeholders to replace, and the attestation left for the submitter."""
    return {
        "model": {**TEMPLATE_MODEL, **model},
        "test_set_not_used_for_training_or_tuning": None,
        "protocol": PROTOCOL,
        "dataset_checksum": content_checksum(records),
        "text_radii": False,
    }


SUBMISSION_KIND = "submission"


def _lines(ids: list[str]) -> bytes:
    return ("\n".join(ids) + "\n").encode("utf-8")


def write_template(folder: str | Path) -> Path:
    """The id lists and an example submission.json for the official test set, in a new or empty folder (or one
    this package wrote): a filled-in submission.json is never overwritten."""
    records = load_official("test")
    files = {name: _lines(ids) for name, ids in zip(ID_FILES, (text_ids(records), image_ids(records)))}
    files[SUBMISSION_FILE] = jsonfile.dumps(example_submission(records)).encode("utf-8")
    return write_files(folder, SUBMISSION_KIND, files, option="leaderboard template")


def write_submission(folder: str | Path, records: list[Hierarchy], root: np.ndarray, text: np.ndarray,
                     image: np.ndarray | None, metadata: dict[str, Any],
                     text_radii: np.ndarray | None = None) -> Path:
    """A complete npz submission: ``text`` rows follow ``text_ids``, ``image`` rows ``image_ids``
    (``image`` None for a text-only model). Written as :func:`write_template` writes: never over a file that
    someone else wrote or edited (a submission.json with the attestation set, say)."""
    arrays = {"root": root.astype(np.float32), "text": text.astype(np.float32)}
    if image is not None:
        arrays["image"] = image.astype(np.float32)
    if text_radii is not None:
        arrays["text_radii"] = text_radii.astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files = {"embeddings.npz": buffer.getvalue(), "text_ids.txt": _lines(text_ids(records))}
    if image is not None:
        files["image_ids.txt"] = _lines(image_ids(records))
    document = {**example_submission(records), **metadata, "text_radii": text_radii is not None,
                "modalities": ["text", "image"] if image is not None else ["text"]}
    files[SUBMISSION_FILE] = jsonfile.dumps(document).encode("utf-8")
    return write_files(folder, SUBMISSION_KIND, files, option="submission folder")
