"""The board: scored entries on disk, and the pages rendered from them.

Layout: ``<board>/entries/<model>/<revision>/result.json`` (one scored entry) beside the submitted
``submission.json``. ``build`` renders ``README.md`` and ``index.html``; both are byte-stable for the same
entries, so a submissions pull request shows exactly what changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, jsonfile
from .._io import atomic_open, current_umask
from ..data.official import load_official
from ..data.records import content_checksum
from ..errors import HierarcapsError
from ..metrics.baselines import all_baselines
from ..metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL
from ..metrics.hierarchy import DEFAULT_ROOT_TEXT, DEFAULT_STEPS, PROTOCOL
from ..metrics.scoring import EmbeddedBenchmark, per_unit_metrics, score
from ..outputs import Journal, claim_folder, folder_lock, pending, recover
from ..results import MAX_RESULT_BYTES, Dataset, Result
from ..textsafe import markdown_cell
from . import fingerprint, names
from .archive import ArchiveRefused, opened
from .submission import EMBEDDING_FILES, ID_FILES, SUBMISSION_FILE
from .validate import Report, Submission, check_model, read_meta, short, validate

RESULT_FILE = "result.json"
STAGING = ".staging"
BOARD_KIND = "leaderboard"


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


def score_submission(sub: Submission) -> dict[str, Any]:
    """The entry's result document: the harness's metric functions applied to the submitted embeddings."""
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
    ).to_dict()


def entry_folder(board: Path, meta: dict[str, Any]) -> Path:
    return names.entry_folder(board, meta["model"]["name"], meta["model"]["revision"])


def dumps(document: Any) -> str:
    return jsonfile.dumps(document, sort_keys=True)


@contextlib.contextmanager
def writing(board: Path, notes: list[str] | None = None) -> Iterator[None]:
    """Hold the board for writing: a folder that is a board (marked, or holding ``entries/`` from before
    markers) or a new or empty one, its writer lock, and any write a kill interrupted finished first (said in
    ``notes``). ``add`` and ``build`` hold it, so two at once take turns."""
    claim_folder(board, BOARD_KIND, option="--board", adopt_if="entries")
    with folder_lock(board, what=f"the board {board}"):
        if (line := recover(board)) is not None and notes is not None:
            notes.append(line)
        yield


def add(path: str | Path, board: str | Path = "leaderboard", *, replace: str | None = None,
        notes: list[str] | None = None) -> tuple[Path, str]:
    """Validate, score and store a submission. Returns (entry folder, 'added' | 'unchanged' | 'replaced').

    The entry keeps the submitted embedding file and id lists byte for byte beside its result, so anyone (and
    the pull-request check) can re-score it. Scoring runs first, unlocked; the decision and the store hold the
    board (:func:`writing`), so two ``add`` at once take turns and the second decides against what the first
    wrote. Refused: a copy of an entry's embeddings under any name (recognised by content, see
    ``fingerprint``), a name a reader cannot tell from an existing entry's, and another result under the same
    model and revision unless ``replace`` names that very entry (``<model>/<revision>``): a replacement never
    removes another model's entry.
    """
    board = Path(board)
    try:
        with opened(path) as submitted:
            sub, report = validate(submitted)
            if sub is None:
                raise HierarcapsError(f"{path}: invalid submission ({len(report.problems)} problem(s)): "
                                      + "; ".join(report.problems[:5]))
            folder = entry_folder(board, sub.meta)
            if replace is not None:
                _check_replace(board, replace, folder)
            scored = score_submission(sub)
            Result.from_dict(scored, f"{path}: the entry's result")     # what check and build will read
            result = dumps(scored)
            with writing(board, notes):
                complete = (folder / RESULT_FILE).is_file() and (folder / SUBMISSION_FILE).is_file()
                if complete and same_entry(folder, result, kept_files(submitted)):
                    return folder, "unchanged"
                if complete and replace is None:
                    raise HierarcapsError(f"{folder} already holds another result for this model and revision; "
                                          f"bump the revision, or pass --replace {folder.parent.name}/{folder.name}")
                for clash, what in _clashes(board, folder, sub):
                    raise HierarcapsError(f"{clash} already holds {what}; a new entry needs embeddings of its own "
                                          "and a name of its own")
                texts = {RESULT_FILE: result, SUBMISSION_FILE: dumps(sub.meta)}
                _store(board, folder, texts, {name: submitted / name for name in kept_files(submitted)})
    except ArchiveRefused as exc:
        raise HierarcapsError(f"{path}: invalid submission: {exc}") from None
    return folder, "replaced" if complete else "added"


def same_entry(folder: Path, result: str, files: list[str]) -> bool:
    """Whether ``folder`` already holds this result (to the last digits another machine may differ in) and
    keeps the submitted files."""
    stored = read_meta(folder / RESULT_FILE, Report(), limit=MAX_RESULT_BYTES)
    return first_difference(stored, jsonfile.parse(result.encode(), file="result"), ignore={"package"}) is None \
        and all((folder / name).is_file() for name in files)


def kept_files(submitted: Path) -> list[str]:
    """The submitted files an entry keeps beside its result: the embedding file and its id lists."""
    return [name for name in (*EMBEDDING_FILES, *ID_FILES) if (submitted / name).is_file()]


def _check_replace(board: Path, name: str, folder: Path) -> None:
    """``--replace`` names the submission's own entry (same model and revision), or it is refused."""
    model, _, revision = name.strip("/").partition("/")
    named = board / "entries" / names.slug(model) / names.slug(revision)
    if not revision or named != folder:
        raise HierarcapsError(f"--replace {name}: replaces only this submission's own entry "
                              f"{folder.parent.name}/{folder.name} (same model and revision); an entry of another "
                              "model or revision is removed in a commit of its own, never by add")


def _clashes(board: Path, folder: Path, sub: Submission) -> Iterator[tuple[Path, str]]:
    """Entries this submission may not sit beside: a look-alike name, or a copy of its embeddings under another
    name (by content)."""
    new = Signed(sub)
    for other, result in load_entries(board):
        if other != folder and (found := clash(sub.meta["model"], new, result["model"], signed_entry(other))):
            yield other, found[1]


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


def _store(board: Path, folder: Path, texts: dict[str, str], copies: dict[str, Path]) -> None:
    """Write the entry's files (``texts``, and ``copies`` of submitted files) into a staging folder of its own,
    then move it into place through a journal (an entry it replaces is moved aside first and removed last), so
    a kill at any point leaves the old entry or the new one, and the next writer finishes the move. Called while
    :func:`writing`, so staging folders of killed adds (written before their journal) are cleared first."""
    staging = board / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    unit = Path(tempfile.mkdtemp(prefix="entry-", dir=staging))
    for name, text in texts.items():
        (unit / name).write_text(text, encoding="utf-8")
    for name, source in copies.items():
        shutil.copyfile(source, unit / name)
    for name in (*texts, *copies):
        os.chmod(unit / name, 0o666 & ~current_umask())
    os.chmod(unit, 0o777 & ~current_umask())
    entry, staged = folder.relative_to(board).as_posix(), unit.relative_to(board).as_posix()
    retired = f"{STAGING}/retired"
    steps = [("rename", entry, retired)] if folder.exists() else []
    steps += [("rename", staged, entry), ("remove", STAGING)]
    Journal(board, f"add of {entry}", steps).run()


def load_entries(board: Path) -> list[tuple[Path, dict[str, Any]]]:
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
            Result.from_dict(result, str(path))
        except HierarcapsError:
            continue
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


def build(board: str | Path = "leaderboard", notes: list[str] | None = None) -> list[Path]:
    """Render README.md and index.html; refused, one line per problem, while any entry is malformed. Both pages
    are written in full, then moved into place through a journal, so they always belong to one build."""
    board = Path(board)
    with writing(board, notes):
        return _write_pages(board)


def _write_pages(board: Path) -> list[Path]:
    """Both pages written in full, then moved into place through one journal (the board held for writing)."""
    problems = entry_problems(board)
    if problems:
        raise HierarcapsError(f"{board}: {len(problems)} problem(s) with the entries, nothing rendered: "
                              + "; ".join(problems[:5]))
    pages = rendered(board)
    for name, text in pages.items():
        with atomic_open(board / STAGING / name) as handle:
            handle.write(text)
    Journal(board, "build of the pages", [*(("rename", f"{STAGING}/{name}", name) for name in pages),
                                          ("remove", STAGING)]).run()
    return [board / name for name in pages]


def rescore_board(board: str | Path = "leaderboard", notes: list[str] | None = None) -> list[Path]:
    """Score every entry again from the embeddings it keeps, with this package's metrics, and rewrite the results
    that changed (a metric added to the catalogue reaches every entry), then rebuild the pages. Returns the
    entries rewritten. Refused, nothing written, if any entry's kept files no longer validate. The new results are
    staged, then moved into place through one journal: a kill leaves every old result or every new one."""
    board = Path(board)
    with writing(board, notes):
        shutil.rmtree(board / STAGING, ignore_errors=True)
        changed: list[Path] = []
        for folder, stored in load_entries(board):
            if not kept_files(folder):
                if notes is not None:
                    notes.append(f"{folder}: keeps no embeddings, left as it is")
                continue
            sub, report = validate(folder)
            if sub is None:
                raise HierarcapsError(f"{folder}: its kept submission no longer validates, nothing rescored: "
                                      + "; ".join(report.problems[:5]))
            result = score_submission(sub)
            if first_difference(stored, result, ignore={"package"}) is None:
                continue
            with atomic_open(board / STAGING / f"result-{len(changed)}.json") as handle:
                handle.write(dumps(result))
            changed.append(folder)
        steps = [("rename", f"{STAGING}/result-{i}.json", (folder / RESULT_FILE).relative_to(board).as_posix())
                 for i, folder in enumerate(changed)]
        if steps:
            Journal(board, "rescore of the entries", [*steps, ("remove", STAGING)]).run()
        _write_pages(board)
    return changed


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
    problems = [f"{board}: an interrupted {journal.what}; run `hierarcaps leaderboard build` to finish it"
                for journal in [pending(board)] if journal is not None]
    problems += entry_problems(board)
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
    report = Report()
    stored = read_meta(folder / RESULT_FILE, report, limit=MAX_RESULT_BYTES)
    if report.problems:
        return result, [f"{folder}/{problem}" for problem in report.problems]
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
    from .render import board_table, places, rows

    table = rows([result for _, result in load_entries(board)], reference_rows())
    for place, row in zip(places(table), table):
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
    """Malformed, incomplete, misplaced or duplicated entries (the same name, a look-alike name, or a copy of
    another entry's embeddings by content), and stray files, one line each."""
    problems: list[str] = []
    seen_names: dict[tuple[str, str], Path] = {}
    seen: list[tuple[Path, dict[str, Any], Signed | None]] = []
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
        seen_names[key] = folder
        signed = signed_entry(folder)
        problems += [f"{folder}: {found[0]} {other} ({found[1]})" for other, other_model, other_signed in seen
                     if (found := clash(result["model"], signed, other_model, other_signed)) is not None]
        seen.append((folder, result["model"], signed))
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
