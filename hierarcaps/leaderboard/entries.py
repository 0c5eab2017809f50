"""The board's entries read back: where an entry lives, its result scored from a submission, which entries are
well formed, and which clash (the same name, a look-alike name, or a copy of another's embeddings by content).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data.official import load_official
from ..data.records import content_checksum
from ..errors import HierarcapsError
from ..metrics.baselines import all_baselines
from ..metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL
from ..metrics.hierarchy import DEFAULT_ROOT_TEXT, DEFAULT_STEPS, PROTOCOL
from ..metrics.scoring import EmbeddedBenchmark, per_unit_metrics, score
from ..results import MAX_RESULT_BYTES, Dataset, Metric, Result, metric_table, plain
from . import fingerprint, names
from .submission import EMBEDDING_FILES, ID_FILES, SUBMISSION_FILE
from .validate import Report, Submission, check_model, read_meta, validate

RESULT_FILE = "result.json"


def benchmark_of(sub: Submission) -> EmbeddedBenchmark:
    """The submitted embeddings as the harness's benchmark of the official test set."""
    records = load_official("test")
    texts = np.array([r.positive for r in records], dtype=object)
    n, k = texts.shape
    row_image = None
    if sub.image is not None:
        index = {name: i for i, name in enumerate(dict.fromkeys(r.image_file for r in records))}
        row_image = np.array([index[r.image_file] for r in records])
    radii = sub.text_radii.reshape(n, k) if sub.text_radii is not None else None
    return EmbeddedBenchmark(texts, sub.text.reshape(n, k, -1), sub.root, sub.image, row_image, text_radii=radii)


def score_submission(sub: Submission) -> Result:
    """The entry's result: the harness's metric functions applied to the submitted embeddings."""
    bench = benchmark_of(sub)
    n = len(bench.texts)
    records = load_official("test")
    model = dict(sub.meta["model"])
    model["modalities"] = sub.meta.get("modalities", ["text", "image"])
    model["dim"] = int(sub.root.shape[0])
    return Result.scored(
        model, score(bench), Dataset(split="test", rows=n, checksum=content_checksum(records)),
        steps=DEFAULT_STEPS, root_text=DEFAULT_ROOT_TEXT, resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED, level=LEVEL,
        version=__version__,
        extra={"text_radii_declared": sub.text_radii is not None, "embeddings_sha256": sub.embeddings_sha256,
               **({"validation_notes": sub.notes} if sub.notes else {})},
    )


def entry_folder(board: Path, meta: dict[str, Any]) -> Path:
    return names.entry_folder(board, meta["model"]["name"], meta["model"]["revision"])


def kept_files(submitted: Path) -> list[str]:
    """The submitted files an entry keeps beside its result: the embedding file and its id lists."""
    return [name for name in (*EMBEDDING_FILES, *ID_FILES) if (submitted / name).is_file()]


def clash(model: dict[str, Any], signed: Signed | None, other_model: Any,
          other_signed: Signed | None) -> tuple[str, str] | None:
    """Why an entry of ``model`` with embeddings ``signed`` cannot sit beside another: ("looks like", why) for a
    name a reader cannot tell from the other's, ("a copy of", why) for a copy of its embeddings; else None."""
    if (why := names.lookalike(model, other_model)) is not None:
        return "looks like", why
    if signed is not None and other_signed is not None and (why := signed.copy_of(other_signed)) is not None:
        return "a copy of", why
    return None


class Signed:
    """A validated submission with its content signature, and its per-unit metric values computed on demand."""

    def __init__(self, sub: Submission) -> None:
        self.sub, self.signature = sub, fingerprint.signature(sub)
        self._units: dict[str, np.ndarray] | None = None

    def units(self) -> dict[str, np.ndarray]:
        if self._units is None:
            self._units = per_unit_metrics(benchmark_of(self.sub))[0]
        return self._units

    def copy_of(self, other: Signed) -> str | None:
        """Why this is a copy of ``other`` (see ``fingerprint.copy_reason``), or None."""
        if fingerprint.distance(self.signature, other.signature) > fingerprint.NEAR_DISTANCE:
            return None
        return fingerprint.copy_reason(self.signature, other.signature, self.units(), other.units())


def signed_entry(folder: Path) -> Signed | None:
    """An entry's kept embeddings, validated and signed (None when it keeps none that validate)."""
    if not kept_files(folder):
        return None
    sub, _ = validate(folder)
    return Signed(sub) if sub is not None else None


def load_entries(board: Path) -> list[tuple[Path, Result]]:
    """Every entry whose result is a valid document (read by the one standard of ``validate.read_meta`` and
    checked by ``Result.from_dict``) beside its submission.json; ``check`` reports the rest, and ``build``
    refuses to render while there are any, so what ``check`` accepts is what ``build`` renders."""
    entries = []
    for path in sorted((board / "entries").glob(f"*/*/{RESULT_FILE}")):
        report = Report()
        result = read_meta(path, report, limit=MAX_RESULT_BYTES)
        if report.problems or not (path.parent / SUBMISSION_FILE).is_file():
            continue
        try:
            entries.append((path.parent, Result.from_dict(result, str(path))))
        except HierarcapsError:
            continue
    return entries


def reference_rows() -> dict[str, dict[str, Metric]]:
    """Baselines computed from the test set by the same code (random embeddings at d=512, caption length)."""
    records = load_official("test")
    texts = np.array([r.positive for r in records], dtype=object)
    row_image = np.arange(len(records))
    return {name: metric_table(table) for name, table in all_baselines(texts, row_image, len(records)).items()}


def rendered(board: Path) -> dict[str, str]:
    """The board's pages for its current entries (README.md, index.html)."""
    from .render import markdown, page, rows

    table = rows([result for _, result in load_entries(board)], reference_rows())
    return {"README.md": markdown(table), "index.html": page(table)}


def entry_problems(board: Path) -> list[str]:
    """Malformed, incomplete, misplaced or duplicated entries (the same name, a look-alike name, or a copy of
    another entry's embeddings by content), and stray files, one line each."""
    problems: list[str] = []
    seen_names: dict[tuple[str, str], Path] = {}
    seen: list[tuple[Path, dict[str, Any], Signed | None]] = []      # (folder, model as written, signature)
    entries = board / "entries"
    stray = [p for p in (entries.iterdir() if entries.is_dir() else []) if not p.is_dir()]
    stray += [p for p in entries.glob("*/*") if not p.is_dir()]
    problems += [f"{p}: not an entry folder (entries/<model>/<revision>/)" for p in sorted(stray)]
    for folder in sorted(p for p in entries.glob("*/*") if p.is_dir()):
        result = _entry_result(board, folder, problems)
        if result is None:
            continue
        key = (names.normalised(result.model.name), names.normalised(result.model.revision or ""))
        if key in seen_names:
            problems.append(f"{folder}: duplicates {seen_names[key]} (same model and revision)")
        seen_names[key] = folder
        signed = signed_entry(folder)
        model = plain(result.model)
        problems += [f"{folder}: {found[0]} {other} ({found[1]})" for other, other_model, other_signed in seen
                     if (found := clash(model, signed, other_model, other_signed)) is not None]
        seen.append((folder, model, signed))
    return problems


def _entry_result(board: Path, folder: Path, problems: list[str]) -> Result | None:
    """The entry's result if it is complete, well-formed and where its name puts it; else problems noted."""
    missing_files = [name for name in (RESULT_FILE, SUBMISSION_FILE) if not (folder / name).is_file()]
    if missing_files:
        problems.append(f"{folder}: missing {', '.join(missing_files)}")
        return None
    report = Report()
    result = read_meta(folder / RESULT_FILE, report, limit=MAX_RESULT_BYTES)
    if report.problems:
        problems += [f"{folder}/{p}" for p in report.problems]
        return None
    try:
        typed = Result.from_dict(result, str(folder / RESULT_FILE))          # the one validator of a result
    except HierarcapsError as exc:
        problems.append(str(exc))
        return None
    if not isinstance(result.get("embeddings_sha256"), str) or not isinstance(result["model"].get("revision"), str):
        problems.append(f"{folder / RESULT_FILE}: an entry's result names its revision and embeddings_sha256")
        return None
    check_model(result["model"], report)
    problems += [f"{folder / RESULT_FILE}: {p.removeprefix(SUBMISSION_FILE + ': ')}" for p in report.problems]
    if result["protocol"].get("name") != PROTOCOL:
        problems.append(f"{folder / RESULT_FILE}: protocol {result['protocol'].get('name')!r}, expected {PROTOCOL!r}")
    try:
        expected = entry_folder(board, result)
    except HierarcapsError as exc:
        problems.append(f"{folder}: {exc}")
        return None
    if folder != expected:
        problems.append(f"{folder}: should be {expected} for its model and revision")
    return None if report.problems else typed
