"""Validation of a submission: every problem reported, one line each; only a clean one is scored.

Checks: archive safety, no pickles anywhere, submission.json schema and declarations, the protocol and
dataset checksum, id lists (missing, extra, duplicated), array shapes, dtypes and dimensions, NaN/inf,
zero vectors, unit length (vectors off by more than 1e-3 are normalised and reported), declared radii.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsonfile
from .._io import PICKLE_SUFFIXES, sha256_file
from ..data.official import load_official
from ..data.records import content_checksum
from ..errors import DataError
from ..fields import schema_problems
from ..metrics.hierarchy import PROTOCOL
from .archive import MAX_FILE_BYTES, ArchiveRefused, opened
from .names import link_problem, name_problem, normalised
from .readers import UnreadableEmbeddings, read_npz, read_parquet, read_safetensors
from .submission import EMBEDDING_FILES, ID_FILES, PLACEHOLDERS, SUBMISSION_FILE, image_ids, submission_schema, text_ids

REFUSED_SUFFIXES = frozenset({*PICKLE_SUFFIXES, ".npy"})
"""Pickles, and ``.npy`` (which may hold one): a submission's arrays come as ``.npz``, read without pickles."""
UNIT_TOLERANCE = 1e-3
MAX_META_BYTES = 64 * 2**10
"""submission.json."""
MAX_ID_FILE_BYTES = 2**20
"""text_ids.txt, image_ids.txt."""


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
        if path.suffix.lower() in REFUSED_SUFFIXES or _looks_like_pickle(path):
            report.problem(rel, "pickle-capable file refused (use .npz, .safetensors or .parquet)")


def read_meta(path: Path, report: Report, limit: int | None = None) -> dict[str, Any]:
    """A JSON object file (submission.json, a stored result) as a dict, or {} with the reason reported. Board
    files are held to one standard at every read (``jsonfile``): a regular file within ``limit`` bytes
    (checked before reading), UTF-8 without a byte-order mark, strict JSON (no NaN or Infinity, no key twice,
    no lone surrogates)."""
    limit = MAX_META_BYTES if limit is None else limit
    if not path.exists() and not path.is_symlink():
        report.problem(path.name, "missing")
        return {}
    try:
        return jsonfile.read_object(path, limit=limit, what=path.name)
    except DataError as exc:
        report.problem(path.name, exc.reason)
        return {}


def check_meta(folder: Path, report: Report) -> dict[str, Any]:
    meta = read_meta(folder / SUBMISSION_FILE, report)
    if not meta:
        return {}
    for problem in schema_problems(meta, submission_schema()):
        report.problem(SUBMISSION_FILE, problem)
    if isinstance(meta.get("model"), dict):
        check_model(meta["model"], report)
    if meta.get("test_set_not_used_for_training_or_tuning") is not True:
        report.problem(f"{SUBMISSION_FILE}: test_set_not_used_for_training_or_tuning",
                       "must be true: entries must not have trained or tuned on the HierarCaps test set")
    if "protocol" in meta and meta["protocol"] != PROTOCOL:
        report.problem(f"{SUBMISSION_FILE}: protocol", f"{short(meta['protocol'])}; this board scores {PROTOCOL!r}")
    expected = content_checksum(load_official("test"))
    if "dataset_checksum" in meta and meta["dataset_checksum"] != expected:
        report.problem(f"{SUBMISSION_FILE}: dataset_checksum", f"{short(meta['dataset_checksum'])} is not the test "
                       f"set's {expected!r}")
    modalities = meta.get("modalities", ["text", "image"])
    if modalities not in (["text"], ["text", "image"]):
        report.problem(f"{SUBMISSION_FILE}: modalities", 'must be ["text"] or ["text", "image"]')
    return meta


def check_model(model: dict[str, Any], report: Report) -> None:
    """Names that make safe folders, an http(s) link, no template placeholders (bounds are the schema's)."""
    where = f"{SUBMISSION_FILE}: model"
    for key in ("name", "revision"):
        if isinstance(model.get(key), str) and (problem := name_problem(model[key])):
            report.problem(f"{where}: {key}", problem)
    if isinstance(model.get("link"), str) and (problem := link_problem(model["link"])):
        report.problem(f"{where}: link", problem)
    for key, value in model.items():
        if isinstance(value, str) and value in PLACEHOLDERS.get(key, ()):
            report.problem(f"{where}: {key}", f"still the template's placeholder {value!r}; fill it in")


def short(value: Any) -> str:
    """A submitted value for an error line: repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _read_ids(folder: Path, name: str, report: Report) -> list[str] | None:
    path = folder / name
    if not path.is_file():
        report.problem(name, "missing (it gives the row order of the arrays)")
        return None
    if path.stat().st_size > MAX_ID_FILE_BYTES:
        report.problem(name, f"{path.stat().st_size} bytes, over the limit of {MAX_ID_FILE_BYTES}")
        return None
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        report.problem(name, "not UTF-8")
        return None


def load_arrays(folder: Path, report: Report) -> tuple[dict[str, np.ndarray], dict[str, list[str]], str] | None:
    """Arrays and the ids of their rows, from whichever embedding file is present (sizes checked first)."""
    present = [name for name in EMBEDDING_FILES if (folder / name).is_file()]
    if len(present) != 1:
        report.problem("embeddings", f"expected exactly one of {', '.join(EMBEDDING_FILES)}, found {present or 'none'}")
        return None
    path = folder / present[0]
    records = load_official("test")
    expected = {"text": len(text_ids(records)), "image": len(image_ids(records))}
    try:
        if path.suffix == ".parquet":
            arrays, ids = read_parquet(path, expected)
        else:
            arrays = (read_npz if path.suffix == ".npz" else read_safetensors)(path, expected)
            ids = {kind: _read_ids(folder, name, report) for kind, name in zip(("text", "image"), ID_FILES)
                   if kind in arrays}
    except UnreadableEmbeddings as exc:
        report.problem(path.name, str(exc))
        return None
    except ValueError as exc:
        report.problem(path.name, f"unreadable without unpickling ({exc})")
        return None
    except Exception as exc:  # a corrupt file of any kind is one reported problem
        report.problem(path.name, f"unreadable ({type(exc).__name__}: {one_line(exc)})")
        return None
    return arrays, {k: v for k, v in ids.items() if v is not None}, sha256_file(path)


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
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(array.astype(np.float64), axis=1)
    unusable = ~(np.isfinite(norms) & (norms > 0))
    if unusable.any():
        report.problem(name, f"{int(unusable.sum())} zero vector(s) or row(s) whose length overflows float64 "
                       f"(first row {int(np.argmax(unusable))}): they cannot be normalised")
        return None
    off = np.abs(norms - 1) > UNIT_TOLERANCE
    if off.any():
        report.note(name, f"{int(off.sum())} vector(s) were not unit length "
                    f"(norms {norms.min():.3g}..{norms.max():.3g}); normalised before scoring")
    with np.errstate(under="ignore"):
        return (array / norms[:, None]).astype(np.float32)


def collapsed_captions_note(text: np.ndarray, records: list[Any], report: Report) -> None:
    """Say so when different captions share a vector: a model that collapses them knows less than it seems
    (such ties score as chance, never as the right order)."""
    captions = len({t for r in records for t in r.positive})
    vectors = len(np.unique(text, axis=0))
    if vectors < captions:
        report.note("text", f"{vectors} distinct vector(s) for {captions} distinct captions: different captions "
                    "share an embedding (ties in d_corr and retrieval count as chance)")


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
        if text is not None:
            collapsed_captions_note(text, records, report)
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
    model = {**meta["model"], **{k: normalised(meta["model"][k]) for k in ("name", "revision")}}
    return Submission({**meta, "model": model}, checked_root[0], text, image, radii, digest, report.notes), report


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
