"""Validation of a submission: every problem reported, one line each; only a clean one is scored.

Checks: archive safety, no pickles anywhere, submission.json schema and declarations, the protocol and
dataset checksum, id lists (missing, extra, duplicated), array shapes, dtypes and dimensions, NaN/inf,
zero vectors, unit length (vectors off by more than 1e-3 are normalised and reported), declared radii.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..data.official import load_official
from ..data.records import content_checksum
from ..metrics.hierarchy import PROTOCOL
from .archive import MAX_FILE_BYTES, ArchiveRefused, opened
from .submission import EMBEDDING_FILES, ID_FILES, SCHEMA, SUBMISSION_FILE, image_ids, text_ids

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt", ".npy"}
UNIT_TOLERANCE = 1e-3


@dataclasses.dataclass
class Submission:
    """A validated submission, arrays aligned with the official id order."""

    meta: dict[str, Any]
    root: np.ndarray
    text: np.ndarray                 # (N * K, d) in text_ids order
    image: np.ndarray | None         # (M, d) in image_ids order; None for text-only models
    text_radii: np.ndarray | None
    embeddings_sha256: str
    notes: list[str]


class Report:
    """Problems (which reject) and notes (which do not), each one line."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def note(self, where: str, message: str) -> None:
        self.notes.append(f"{where}: {message}")


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def check_files(folder: Path, report: Report) -> None:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            report.problem(rel, "symbolic link")
            continue
        if not path.is_file():
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            report.problem(rel, f"{path.stat().st_size} bytes, over the limit of {MAX_FILE_BYTES}")
        if path.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(path):
            report.problem(rel, "pickle-capable file refused (use .npz, .safetensors or .parquet)")


def check_meta(folder: Path, report: Report) -> dict[str, Any]:
    path = folder / SUBMISSION_FILE
    if not path.is_file():
        report.problem(SUBMISSION_FILE, "missing")
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.problem(SUBMISSION_FILE, f"not valid JSON ({exc})")
        return {}
    if not isinstance(meta, dict):
        report.problem(SUBMISSION_FILE, "top level must be an object")
        return {}
    _check_schema(meta, SCHEMA, SUBMISSION_FILE, report)
    if meta.get("test_set_not_used_for_training_or_tuning") is not True:
        report.problem(f"{SUBMISSION_FILE}: test_set_not_used_for_training_or_tuning",
                       "must be true: entries must not have trained or tuned on the HierarCaps test set")
    if "protocol" in meta and meta["protocol"] != PROTOCOL:
        report.problem(f"{SUBMISSION_FILE}: protocol", f"{meta['protocol']!r}; this board scores {PROTOCOL!r}")
    expected = content_checksum(load_official("test"))
    if "dataset_checksum" in meta and meta["dataset_checksum"] != expected:
        report.problem(f"{SUBMISSION_FILE}: dataset_checksum", f"{meta['dataset_checksum']!r} is not the test set's "
                       f"{expected!r}")
    modalities = meta.get("modalities", ["text", "image"])
    if modalities not in (["text"], ["text", "image"]):
        report.problem(f"{SUBMISSION_FILE}: modalities", 'must be ["text"] or ["text", "image"]')
    return meta


def _check_schema(value: Any, schema: Any, where: str, report: Report) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            report.problem(where, "must be an object")
            return
        for key, sub in schema.items():
            if key not in value:
                report.problem(f"{where}: {key}", "missing")
            else:
                _check_schema(value[key], sub, f"{where}: {key}", report)
    elif not isinstance(value, schema) or (schema is int and isinstance(value, bool)):
        report.problem(where, f"must be {schema.__name__}, not {type(value).__name__}")


def _read_ids(folder: Path, name: str, report: Report) -> list[str] | None:
    path = folder / name
    if not path.is_file():
        report.problem(name, "missing (it gives the row order of the arrays)")
        return None
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        report.problem(name, "not UTF-8")
        return None


def load_arrays(folder: Path, report: Report) -> tuple[dict[str, np.ndarray], dict[str, list[str]], str] | None:
    """Arrays and the ids of their rows, from whichever embedding file is present."""
    present = [name for name in EMBEDDING_FILES if (folder / name).is_file()]
    if len(present) != 1:
        report.problem("embeddings", f"expected exactly one of {', '.join(EMBEDDING_FILES)}, found {present or 'none'}")
        return None
    path = folder / present[0]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        if path.suffix == ".parquet":
            return (*_parquet_arrays(path, report), digest)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        else:
            from safetensors.numpy import load_file

            arrays = load_file(path)
    except ValueError as exc:
        report.problem(path.name, f"unreadable without unpickling ({exc})")
        return None
    except Exception as exc:  # a corrupt file of any kind is one reported problem
        report.problem(path.name, f"unreadable ({type(exc).__name__}: {exc})")
        return None
    ids = {kind: _read_ids(folder, name, report) for kind, name in zip(("text", "image"), ID_FILES)
           if kind in arrays}
    return arrays, {k: v for k, v in ids.items() if v is not None}, digest


def _parquet_arrays(path: Path, report: Report) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    for column in ("kind", "id", "embedding"):
        if column not in table:
            report.problem(f"{path.name}: {column}", "missing column")
            return {}, {}
    arrays: dict[str, np.ndarray] = {}
    ids: dict[str, list[str]] = {}
    for kind in ("root", "text", "image"):
        rows = [i for i, k in enumerate(table["kind"]) if k == kind]
        if rows:
            arrays[kind] = np.array([table["embedding"][i] for i in rows], dtype=np.float32)
            ids[kind] = [str(table["id"][i]) for i in rows]
        if kind == "text" and "radius" in table and rows:
            arrays["text_radii"] = np.array([table["radius"][i] for i in rows], dtype=np.float64)
    if "root" in arrays:
        arrays["root"] = arrays["root"][0]
    return arrays, ids


def _aligned(name: str, array: np.ndarray, given: list[str] | None, official: list[str],
             report: Report) -> np.ndarray | None:
    if given is None:
        return None
    counts = Counter(given)
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    missing = [i for i in official if i not in counts]
    extra = sorted(set(given) - set(official))
    for label, items in (("duplicated", duplicated), ("missing", missing), ("unknown", extra)):
        if items:
            report.problem(f"{name} ids", f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    if len(array) != len(given):
        report.problem(name, f"{len(array)} rows but {len(given)} ids")
        return None
    if duplicated or missing or extra:
        return None
    position = {item: i for i, item in enumerate(given)}
    return array[[position[i] for i in official]]


def check_vectors(name: str, array: np.ndarray, dim: int | None, report: Report) -> np.ndarray | None:
    """Shape, dtype, finiteness and unit length of a (n, d) float array; returns it as float32 unit rows."""
    if array.dtype.kind != "f":
        report.problem(name, f"dtype {array.dtype}, expected floating point")
        return None
    if array.ndim != 2:
        report.problem(name, f"shape {array.shape}, expected (rows, dim)")
        return None
    if dim is not None and array.shape[1] != dim:
        report.problem(name, f"dimension {array.shape[1]} differs from the root's {dim}")
        return None
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        report.problem(name, f"{int(bad.sum())} row(s) with NaN or infinite values (first row {int(np.argmax(bad))})")
        return None
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    if (norms == 0).any():
        report.problem(name, f"{int((norms == 0).sum())} zero vector(s)")
        return None
    off = np.abs(norms - 1) > UNIT_TOLERANCE
    if off.any():
        report.note(name, f"{int(off.sum())} vector(s) were not unit length "
                    f"(norms {norms.min():.3f}..{norms.max():.3f}); normalised before scoring")
    return (array / norms[:, None]).astype(np.float32)


def validate(path: str | Path) -> tuple[Submission | None, Report]:
    """Validate a submission folder or archive; the Submission is None when any problem was found."""
    report = Report()
    try:
        with opened(path) as folder:
            check_files(folder, report)
            meta = check_meta(folder, report)
            loaded = load_arrays(folder, report) if not report.problems else None
    except ArchiveRefused as exc:
        report.problem(Path(path).name, str(exc))
        return None, report
    if loaded is None:
        return None, report
    arrays, ids, digest = loaded
    records = load_official("test")
    with_images = meta.get("modalities", ["text", "image"]) == ["text", "image"]
    root = arrays.get("root")
    if root is None or root.ndim != 1:
        report.problem("root", "missing" if root is None else f"shape {root.shape}, expected (dim,)")
        return None, report
    checked_root = check_vectors("root", root[None], None, report)
    text = None
    if "text" not in arrays:
        report.problem("text", "missing")
    else:
        text = check_vectors("text", arrays["text"], root.shape[0], report)
        text = _aligned("text", text, ids.get("text"), text_ids(records), report) if text is not None else None
    image = None
    if with_images:
        if "image" not in arrays:
            report.problem("image", "missing (declare \"modalities\": [\"text\"] for a text-only model)")
        else:
            image = check_vectors("image", arrays["image"], root.shape[0], report)
            image = _aligned("image", image, ids.get("image"), image_ids(records), report) if image is not None \
                else None
    elif "image" in arrays:
        report.problem("image", "present but modalities says text only")
    radii = _check_radii(meta, arrays, ids.get("text"), text_ids(records), report)
    if report.problems:
        return None, report
    return Submission(meta, checked_root[0], text, image, radii, digest, report.notes), report


def _check_radii(meta: dict[str, Any], arrays: dict[str, np.ndarray], given: list[str] | None,
                 official: list[str], report: Report) -> np.ndarray | None:
    declared, present = bool(meta.get("text_radii")), "text_radii" in arrays
    if declared != present:
        report.problem("text_radii", "declared in submission.json but absent" if declared
                       else "present but not declared in submission.json (\"text_radii\": true)")
        return None
    if not present:
        return None
    radii = arrays["text_radii"]
    if radii.dtype.kind != "f" or radii.ndim != 1:
        report.problem("text_radii", f"dtype {radii.dtype} shape {radii.shape}, expected a float vector")
        return None
    if not np.isfinite(radii).all() or (radii < 0).any():
        report.problem("text_radii", "must be finite and non-negative")
        return None
    aligned = _aligned("text_radii", radii, given, official, report)
    return None if aligned is None else aligned.astype(np.float64)
