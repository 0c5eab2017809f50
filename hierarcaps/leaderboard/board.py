"""The board: scored entries on disk, and the pages rendered from them.

Layout: ``<board>/entries/<model>/<revision>/result.json`` (one scored entry) beside the submitted
``submission.json``. ``build`` renders ``README.md`` and ``index.html``; both are byte-stable for the same
entries, so a submissions pull request shows exactly what changed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_open, current_umask, exclusive_lock
from ..data.official import load_official
from ..data.records import content_checksum
from ..errors import HierarcapsError
from ..metrics.baselines import all_baselines
from ..metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL
from ..metrics.hierarchy import DEFAULT_ROOT_TEXT, DEFAULT_STEPS, PROTOCOL
from ..metrics.scoring import EmbeddedBenchmark, score
from ..results import Dataset, Result
from ..textsafe import markdown_cell
from . import names
from .archive import ArchiveRefused, opened
from .submission import EMBEDDING_FILES, ID_FILES, SUBMISSION_FILE
from .validate import Report, Submission, check_model, read_meta, short, validate

RESULT_FILE = "result.json"
STAGING = ".staging"
MAX_RESULT_BYTES = 4 * 2**20
"""A stored result.json (the board reads every one at each build)."""


def score_submission(sub: Submission) -> dict[str, Any]:
    """The entry's result document: the harness's metric functions applied to the submitted embeddings."""
    records = load_official("test")
    texts = np.array([r.positive for r in records], dtype=object)
    n, k = texts.shape
    text_emb = sub.text.reshape(n, k, -1)
    row_image = None
    if sub.image is not None:
        index = {name: i for i, name in enumerate(dict.fromkeys(r.image_file for r in records))}
        row_image = np.array([index[r.image_file] for r in records])
    radii = sub.text_radii.reshape(n, k) if sub.text_radii is not None else None
    bench = EmbeddedBenchmark(texts, text_emb, sub.root, sub.image, row_image, text_radii=radii)
    model = dict(sub.meta["model"])
    model["modalities"] = sub.meta.get("modalities", ["text", "image"])
    model["dim"] = int(sub.root.shape[0])
    return Result.scored(
        model, score(bench), Dataset(split="test", rows=n, checksum=content_checksum(records)),
        steps=DEFAULT_STEPS, root_text=DEFAULT_ROOT_TEXT, resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED, level=LEVEL,
        version=__version__,
        extra={"text_radii_declared": sub.text_radii is not None, "embeddings_sha256": sub.embeddings_sha256,
               **({"validation_notes": sub.notes} if sub.notes else {})},
    ).to_dict()


def entry_folder(board: Path, meta: dict[str, Any]) -> Path:
    return names.entry_folder(board, meta["model"]["name"], meta["model"]["revision"])


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


LOCK_FILE = ".lock"


def board_lock(board: Path):
    """The board's writer lock: ``add``, ``--replace`` and ``build`` hold it, so two at once take turns."""
    return exclusive_lock(board / LOCK_FILE, what=f"the board {board}")


def add(path: str | Path, board: str | Path = "leaderboard", *, replace: str | None = None) -> tuple[Path, str]:
    """Validate, score and store a submission. Returns (entry folder, 'added' | 'unchanged' | 'replaced').

    The entry keeps the submitted embedding file and id lists byte for byte beside its result, so anyone (and
    the pull-request check) can re-score it. Scoring runs first, unlocked; the decision and the store hold the
    board's lock, so two ``add`` at once take turns and the second decides against what the first wrote. The
    entry is staged in a folder of its own and renamed into place, so a killed ``add`` leaves no half entry.
    Another result under the same model and revision, the same embeddings under another entry, or a name a
    reader cannot tell from an existing entry's, is refused unless ``replace`` names that entry
    (``<model>/<revision>`` as its folder is named).
    """
    board = Path(board)
    try:
        with opened(path) as submitted:
            sub, report = validate(submitted)
            if sub is None:
                raise HierarcapsError(f"{path}: invalid submission ({len(report.problems)} problem(s)): "
                                      + "; ".join(report.problems[:5]))
            folder = entry_folder(board, sub.meta)
            result = dumps(score_submission(sub))
            with board_lock(board):
                old = _replaced_entry(board, replace) if replace else None
                complete = (folder / RESULT_FILE).is_file() and (folder / SUBMISSION_FILE).is_file()
                if complete and same_entry(folder, result, kept_files(submitted)):
                    return folder, "unchanged"
                for clash, what in _clashes(board, folder, sub, complete):
                    if clash != old:
                        raise HierarcapsError(f"{clash} already holds {what}; bump the revision, or pass "
                                              f"--replace {clash.parent.name}/{clash.name} to replace that entry")
                texts = {RESULT_FILE: result, SUBMISSION_FILE: dumps(sub.meta)}
                _store(board, folder, texts, {name: submitted / name for name in kept_files(submitted)}, old)
    except ArchiveRefused as exc:
        raise HierarcapsError(f"{path}: invalid submission: {exc}") from None
    return folder, "replaced" if old else "added"


def same_entry(folder: Path, result: str, files: list[str]) -> bool:
    """Whether ``folder`` already holds this result (to the last digits another machine may differ in) and
    keeps the submitted files."""
    stored = read_meta(folder / RESULT_FILE, Report(), limit=MAX_RESULT_BYTES)
    return first_difference(stored, json.loads(result), ignore={"package"}) is None \
        and all((folder / name).is_file() for name in files)


def kept_files(submitted: Path) -> list[str]:
    """The submitted files an entry keeps beside its result: the embedding file and its id lists."""
    return [name for name in (*EMBEDDING_FILES, *ID_FILES) if (submitted / name).is_file()]


def _clashes(board: Path, folder: Path, sub: Submission, complete: bool) -> list[tuple[Path, str]]:
    """Entries this submission may not sit beside: its own folder holding another result (an incomplete folder
    from an add killed half-way is simply rewritten), the same embeddings elsewhere, and look-alike names."""
    found = [(folder, "another result for this model and revision")] if complete else []
    model = sub.meta["model"]
    for other, result in load_entries(board):
        if other == folder:
            continue
        if result.get("embeddings_sha256") == sub.embeddings_sha256:
            found.append((other, "the same embeddings"))
        elif (why := names.lookalike(model, result.get("model"))) is not None:
            found.append((other, why))
    return found


def _replaced_entry(board: Path, name: str) -> Path:
    model, _, revision = name.strip("/").partition("/")
    folder = board / "entries" / names.slug(model) / names.slug(revision)
    if not revision or not (folder / RESULT_FILE).is_file():
        raise HierarcapsError(f"--replace {name}: no entry {folder} (name it as <model>/<revision> folders)")
    return folder


def _store(board: Path, folder: Path, texts: dict[str, str], copies: dict[str, Path], old: Path | None) -> None:
    """Write the entry's files (``texts``, and ``copies`` of submitted files) into a staging folder of its own,
    then move it into place (removing ``old`` if given). Called under the board's lock, so staging folders left
    by killed adds are cleared first."""
    staging = board / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    unit = Path(tempfile.mkdtemp(prefix="entry-", dir=staging))
    try:
        for name, text in texts.items():
            (unit / name).write_text(text, encoding="utf-8")
        for name, source in copies.items():
            shutil.copyfile(source, unit / name)
        for name in (*texts, *copies):
            os.chmod(unit / name, 0o666 & ~current_umask())
        os.chmod(unit, 0o777 & ~current_umask())
        for retired in (old, folder):
            if retired is not None and retired.exists():
                shutil.rmtree(retired)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(unit, folder)
        if old is not None and old.parent.exists() and not any(old.parent.iterdir()):
            old.parent.rmdir()
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_entries(board: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable entry (folders with both files and a JSON object result); ``check`` reports the rest."""
    entries = []
    for path in sorted((board / "entries").glob(f"*/*/{RESULT_FILE}")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(result, dict) and (path.parent / SUBMISSION_FILE).is_file():
            entries.append((path.parent, result))
    return entries


def reference_rows() -> dict[str, dict[str, Any]]:
    """Baselines computed from the test set by the same code (random embeddings at d=512, caption length)."""
    records = load_official("test")
    texts = np.array([r.positive for r in records], dtype=object)
    row_image = np.arange(len(records))
    return all_baselines(texts, row_image, len(records))


def rendered(board: Path) -> dict[str, str]:
    """The board's pages for its current entries (README.md, index.html)."""
    from .render import markdown, page, rows

    table = rows([result for _, result in load_entries(board)], reference_rows())
    return {"README.md": markdown(table), "index.html": page(table)}


def build(board: str | Path = "leaderboard") -> list[Path]:
    """Render README.md and index.html; refused, one line per problem, while any entry is malformed."""
    board = Path(board)
    written = []
    with board_lock(board):
        problems = entry_problems(board)
        if problems:
            raise HierarcapsError(f"{board}: {len(problems)} problem(s) with the entries, nothing rendered: "
                                  + "; ".join(problems[:5]))
        for name, text in rendered(board).items():
            with atomic_open(board / name) as handle:
                handle.write(text)
            written.append(board / name)
    return written


@dataclasses.dataclass
class Review:
    """What ``review`` found: problems (one line each) and the results re-computed from entries' embeddings."""

    problems: list[str]
    rescored: dict[Path, dict[str, Any]]


def review(board: str | Path = "leaderboard", entries: Sequence[Path] | None = None) -> Review:
    """Check a board folder as a submission pull request needs: malformed, incomplete, misplaced or duplicated
    entries; each of ``entries`` (default: every entry that keeps embeddings) re-scored from its embeddings and
    compared with its stored result; and pages out of date with the entries."""
    board = Path(board)
    problems = entry_problems(board)
    targets = entries if entries is not None else [f for f, _ in load_entries(board) if kept_files(f)]
    rescored = {}
    for folder in targets:
        result, found = rescore(folder)
        problems += found
        if result is not None:
            rescored[folder] = result
    if problems:
        return Review(problems, rescored)
    for name, text in rendered(board).items():
        page = board / name
        if not page.exists() or page.read_text() != text:
            problems.append(f"{page}: out of date with the entries (run `hierarcaps leaderboard build`)")
    return Review(problems, rescored)


def check(board: str | Path = "leaderboard") -> list[str]:
    """Problems with a board folder, one line each (see :func:`review`)."""
    return review(board).problems


def rescore(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The entry's result computed again from the embeddings it keeps, and the problems found doing so: none
    kept, invalid, or a stored result that does not match them."""
    if not any((folder / name).is_file() for name in EMBEDDING_FILES):
        return None, [f"{folder}: no embeddings to re-score (an entry keeps the submitted embedding file; add it "
                      "with `hierarcaps leaderboard add`)"]
    sub, report = validate(folder)
    if sub is None:
        return None, [f"{folder}/{problem}" for problem in report.problems]
    result = score_submission(sub)
    stored = read_meta(folder / RESULT_FILE, Report(), limit=MAX_RESULT_BYTES)
    where = first_difference(stored, result, ignore={"package"})
    return result, [f"{folder / RESULT_FILE}: does not match its embeddings ({where})"] if where else []


def first_difference(stored: Any, computed: Any, *, ignore: frozenset[str] | set[str] = frozenset(),
                     path: str = "") -> str | None:
    """Where two result documents first differ (numbers within 1e-9, for other machines' last digits), or None;
    top-level keys in ``ignore`` (the package version) are skipped."""
    if isinstance(stored, dict) and isinstance(computed, dict):
        for key in sorted(set(stored) | set(computed)):
            if not path and key in ignore:
                continue
            if key not in stored or key not in computed:
                return f"{path}{key}: {'missing' if key not in stored else 'not expected'}"
            if (found := first_difference(stored[key], computed[key], path=f"{path}{key}.")) is not None:
                return found
        return None
    if isinstance(stored, list) and isinstance(computed, list) and len(stored) == len(computed):
        return next((found for i, (a, b) in enumerate(zip(stored, computed))
                     if (found := first_difference(a, b, path=f"{path}{i}.")) is not None), None)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (stored, computed))
    if (numbers and math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-9)) or stored == computed:
        return None
    return f"{path.rstrip('.')}: stored {short(stored)}, re-scored {short(computed)}"


def changed_entries(board: Path, since: str) -> list[Path]:
    """Entry folders with files changed between the git revision ``since`` and HEAD (a pull request's
    entries), existing ones only."""
    import subprocess

    if since.startswith("-"):
        raise HierarcapsError(f"--changed-since {since!r}: not a git revision")
    try:
        done = subprocess.run(["git", "diff", "--name-only", "--no-renames", f"{since}...HEAD", "--", "."],
                              cwd=board / "entries", capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HierarcapsError(f"cannot run git in {board}: {exc}") from None
    if done.returncode != 0:
        raise HierarcapsError(f"git diff {since}...HEAD failed in {board}: {done.stderr.strip()[:300]}")
    top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=board, capture_output=True,
                              text=True, timeout=60).stdout.strip())
    folders = {(top / line).parent for line in done.stdout.splitlines() if line.strip()}
    return sorted(f for f in folders if f.is_dir() and f.parent.parent.resolve() == (board / "entries").resolve())


def summary(board: Path, outcome: Review) -> str:
    """Markdown for the reviewer: the re-scored entries with their place on the board, then the problems."""
    from .render import board_table, rows

    table = rows([result for _, result in load_entries(board)], reference_rows())
    for place, row in enumerate(table, start=1):
        row["place"] = place
    names = {(r["model"]["name"], r["model"]["revision"]) for r in outcome.rescored.values()}
    checked = [row for row in table if not row["reference"] and (row["name"], row["revision"]) in names]
    lines = ["## Leaderboard check", "",
             f"Entries re-scored from their embeddings: {len(outcome.rescored)}; board places count the "
             f"{sum(r['reference'] for r in table)} reference rows.", ""]
    if checked:
        lines += [*board_table(checked, rank=True), ""]
    lines += [f"**{len(outcome.problems)} problem(s)**", "", *(f"- {markdown_cell(p)}" for p in outcome.problems)] \
        if outcome.problems else ["All checks passed: results match their embeddings, pages are up to date."]
    return "\n".join(lines) + "\n"


def entry_problems(board: Path) -> list[str]:
    """Malformed, incomplete, misplaced or duplicated entries, and stray files, one line each."""
    problems: list[str] = []
    seen_names: dict[tuple[str, str], Path] = {}
    seen_embeddings: dict[str, Path] = {}
    seen_models: list[tuple[Path, dict[str, Any]]] = []
    entries = board / "entries"
    stray = [p for p in (entries.iterdir() if entries.is_dir() else []) if not p.is_dir()]
    stray += [p for p in entries.glob("*/*") if not p.is_dir()]
    problems += [f"{p}: not an entry folder (entries/<model>/<revision>/)" for p in sorted(stray)]
    for folder in sorted(p for p in entries.glob("*/*") if p.is_dir()):
        result = _entry_result(board, folder, problems)
        if result is None:
            continue
        key = (names.normalised(result["model"]["name"]), names.normalised(result["model"]["revision"]))
        if key in seen_names:
            problems.append(f"{folder}: duplicates {seen_names[key]} (same model and revision)")
        problems += [f"{folder}: looks like {other} ({why})" for other, other_model in seen_models
                     if (why := names.lookalike(result["model"], other_model)) is not None]
        seen_names[key] = folder
        seen_models.append((folder, result["model"]))
        digest = result["embeddings_sha256"]
        if digest in seen_embeddings:
            problems.append(f"{folder}: the same embeddings as {seen_embeddings[digest]}")
        seen_embeddings[digest] = folder
    return problems


def _entry_result(board: Path, folder: Path, problems: list[str]) -> dict[str, Any] | None:
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
        Result.from_dict(result, str(folder / RESULT_FILE))          # the one validator of a result document
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
    return None if report.problems else result
