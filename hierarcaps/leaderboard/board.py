"""The board's writes: ``add`` (a submission scored and stored as an entry), ``build`` (the pages), ``rescore``
(every entry scored again after a metric is added), each holding the board folder for writing.

Layout: ``<board>/entries/<model>/<revision>/result.json`` (one scored entry) beside the submitted
``submission.json`` and the kept embeddings. ``build`` renders ``README.md`` and ``index.html``; both are
byte-stable for the same entries, so a submissions pull request shows exactly what changed. Reading entries is
``entries``; checking a board is ``review``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import jsonfile
from .._io import atomic_open, current_umask
from ..errors import HierarcapsError
from ..outputs import Journal, claim_folder, folder_lock, recover
from ..results import MAX_RESULT_BYTES, Result, plain
from . import names
from .archive import ArchiveRefused, opened
from .entries import (
    RESULT_FILE,
    Signed,
    clash,
    entry_folder,
    entry_problems,
    kept_files,
    load_entries,
    rendered,
    score_submission,
    signed_entry,
)
from .review import first_difference
from .submission import SUBMISSION_FILE
from .validate import Report, Submission, read_meta, validate

STAGING = ".staging"


BOARD_KIND = "leaderboard"


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
            scored = score_submission(sub).to_dict()
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
        if other != folder and (found := clash(sub.meta["model"], new, plain(result.model), signed_entry(other))):
            yield other, found[1]


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


def rescore(board: str | Path = "leaderboard", notes: list[str] | None = None) -> list[Path]:
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
            result = score_submission(sub).to_dict()
            if first_difference(stored.to_dict(), result, ignore={"package"}) is None:
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
