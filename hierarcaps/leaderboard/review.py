"""What a submission pull request runs: every entry checked, entries re-scored from their embeddings and compared
with their stored results, the pages compared with a fresh render, and a markdown summary for the reviewer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import HierarcapsError
from ..outputs import pending
from ..results import MAX_RESULT_BYTES, Result
from ..textsafe import markdown_cell
from .entries import RESULT_FILE, entry_problems, kept_files, load_entries, reference_rows, rendered, score_submission
from .submission import EMBEDDING_FILES
from .validate import Report, read_meta, short, validate


@dataclasses.dataclass
class Review:
    """What ``review`` found: problems (one line each) and the results re-computed from entries' embeddings."""

    problems: list[str]
    rescored: dict[Path, Result]


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
        result, found = rescore_entry(folder)
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


def rescore_entry(folder: Path) -> tuple[Result | None, list[str]]:
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
    where = first_difference(stored, result.to_dict(), ignore={"package"})
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
    names = {(r.model.name, r.model.revision) for r in outcome.rescored.values()}
    checked = [row for row in table if not row["reference"] and (row["name"], row["revision"]) in names]
    lines = ["## Leaderboard check", "",
             f"Entries re-scored from their embeddings: {len(outcome.rescored)}; board places count the "
             f"{sum(r['reference'] for r in table)} reference rows.", ""]
    if checked:
        lines += [*board_table(checked, rank=True), ""]
    lines += [f"**{len(outcome.problems)} problem(s)**", "", *(f"- {markdown_cell(p)}" for p in outcome.problems)] \
        if outcome.problems else ["All checks passed: results match their embeddings, pages are up to date."]
    return "\n".join(lines) + "\n"
