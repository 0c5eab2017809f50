"""Where a command may write, and how a write of several steps survives a kill.

- **Owned folders.** A command writes only into a folder it created or marked as its own (:func:`claim_folder`):
  a new or empty folder is marked (``.hierarcaps-owner.json`` names the kind of output), a folder marked by the
  same kind of command is taken up again (to resume or replace its own output), and anything else is refused in
  one line before a byte is written, so a mistyped ``--out`` never deletes someone's files.
- **Journaled steps.** :class:`Journal` records a list of renames and removals before the first is made; each is
  idempotent, so after a kill at any point the next command (:func:`recover`) finishes the list from where it
  stopped and says so. What it renames is written in full first, so finishing is always possible: a reader
  sees the old state or the new one, never neither.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import jsonfile
from ._io import atomic_open, exclusive_lock
from .errors import DataError, HierarcapsError

OWNER_FILE = ".hierarcaps-owner.json"
LOCK_FILE = ".hierarcaps.lock"
JOURNAL_FILE = ".hierarcaps-journal.json"
MAX_MARKER_BYTES = 64 * 2**10


def _marker(folder: Path) -> dict[str, Any]:
    """The owner marker's document ({} where there is none, or an unreadable one)."""
    marker = folder / OWNER_FILE
    if not marker.is_file():
        return {}
    try:
        return jsonfile.read_object(marker, limit=MAX_MARKER_BYTES, what="owner marker")
    except DataError:
        return {}


def mark_folder(folder: Path, kind: str, files: dict[str, str] | None = None) -> None:
    """Mark a folder this command made as holding its output of ``kind`` (``files``: name -> SHA-256 of files it
    wrote that it may later overwrite)."""
    with atomic_open(folder / OWNER_FILE) as handle:
        handle.write(jsonfile.dumps({"kind": kind, "written_by": "hierarcaps", **({"files": files} if files else {})}))


def owner_of(folder: Path) -> str | None:
    """The kind of output a folder was marked as holding, or None (no marker, or an unreadable one)."""
    kind = _marker(folder).get("kind")
    return kind if isinstance(kind, str) else None


def _is_empty(folder: Path) -> bool:
    """Nothing in it but, perhaps, the lock of a writer that claims it at this moment."""
    return all(entry.name == LOCK_FILE for entry in folder.iterdir())


def claim_folder(folder: str | os.PathLike[str], kind: str, *, option: str = "--out",
                 adopt_if: str | None = None) -> Path:
    """``folder`` as the output of a command of ``kind``: created, or empty, or already marked with ``kind``.

    ``adopt_if``: a relative path whose presence marks a folder written before markers existed (a board's
    ``entries``, a generation run's ``run.json``); such a folder is marked and taken up. Anything else ends in
    one line, nothing written.
    """
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise HierarcapsError(f"{option} {folder}: not a folder (a link or a file); give a new or empty folder")
    if folder.is_dir():
        found = owner_of(folder)
        if found == kind:
            return folder
        if found is not None:
            raise HierarcapsError(f"{option} {folder}: holds the output of another command ({found}), not "
                                  f"{kind}; give a new or empty folder")
        if not _is_empty(folder) and not (adopt_if and (folder / adopt_if).exists()):
            raise HierarcapsError(f"{option} {folder}: not empty and not written by hierarcaps ({kind}); nothing "
                                  "there was changed: give a new or empty folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mark_folder(folder, kind)
    except OSError as exc:
        raise HierarcapsError(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def write_files(folder: str | os.PathLike[str], kind: str, files: dict[str, bytes], *, option: str) -> Path:
    """Write ``files`` (name -> bytes) into an owned folder (:func:`claim_folder`), each atomically. A file there
    that this package did not write, or that was edited since (its SHA-256 differs from the one the marker
    records), is never overwritten: the whole write is refused first, in one line."""
    import hashlib

    folder = claim_folder(folder, kind, option=option)
    recorded = _marker(folder).get("files")
    recorded = recorded if isinstance(recorded, dict) else {}
    for name in files:
        path = folder / name
        if (path.exists() or path.is_symlink()) and (not path.is_file() or recorded.get(name) != _sha256(path)):
            raise HierarcapsError(f"{path}: written or edited by someone else since hierarcaps wrote it; move it "
                                  "away to write a new one (nothing was changed)")
    for name, data in files.items():
        with atomic_open(folder / name, "wb") as handle:
            handle.write(data)
        recorded[name] = hashlib.sha256(data).hexdigest()
    mark_folder(folder, kind, recorded)
    return folder


def _sha256(path: Path) -> str:
    from ._io import sha256_file

    return sha256_file(path)


@contextlib.contextmanager
def folder_lock(folder: Path, *, what: str) -> Iterator[None]:
    """The writer lock of an owned folder: two commands writing one folder take turns."""
    with exclusive_lock(folder / LOCK_FILE, what=what):
        yield


class Journal:
    """Renames and removals inside ``folder`` that must all happen: recorded first, then made one by one.

    ``steps`` are ``("rename", source, target)`` and ``("remove", path)`` with paths relative to ``folder``. The
    journal records how many steps are done after each one; the step a kill interrupted is idempotent (a rename
    whose source is gone was made, a removal of a missing path too), so :meth:`finish` can be called again after
    a kill at any point. Hold the folder's lock around it.
    """

    def __init__(self, folder: Path, what: str, steps: list[tuple[str, ...]], done: int = 0, *,
                 name: str = JOURNAL_FILE) -> None:
        self.folder, self.what, self.steps, self.done, self.name = folder, what, steps, done, name

    def _record(self) -> None:
        with atomic_open(self.folder / self.name) as handle:
            handle.write(jsonfile.dumps({"what": self.what, "steps": [list(s) for s in self.steps],
                                         "done": self.done}))

    def run(self) -> None:
        self._record()
        self.finish()

    def finish(self) -> None:
        while self.done < len(self.steps):
            step = self.steps[self.done]
            path = self.folder / step[1]
            if step[0] == "rename" and (path.exists() or path.is_symlink()):
                target = self.folder / step[2]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
            elif step[0] == "remove" and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif step[0] == "remove":
                path.unlink(missing_ok=True)
            self.done += 1
            if self.done < len(self.steps):
                self._record()
        (self.folder / self.name).unlink(missing_ok=True)


def pending(folder: Path, name: str = JOURNAL_FILE) -> Journal | None:
    """The journal (file ``name``) of a multi-step write that was interrupted in ``folder``, or None."""
    path = folder / name
    if not path.is_file():
        return None
    document: Any = jsonfile.read_object(path, limit=MAX_MARKER_BYTES, what="journal")
    steps = [tuple(step) for step in document.get("steps", [])]
    for step in steps:
        if not (step and step[0] in ("rename", "remove") and all(isinstance(p, str) and _inside(p) for p in step[1:])):
            raise DataError(f"a step {str(step)[:80]} that this package does not write", file=str(path))
    done = document.get("done", 0)
    if not isinstance(done, int) or isinstance(done, bool) or not 0 <= done <= len(steps):
        raise DataError(f"done {str(done)[:20]} is not a step count", file=str(path))
    return Journal(folder, str(document.get("what", "write")), steps, done, name=name)


def _inside(relative: str) -> bool:
    path = Path(relative)
    return not path.is_absolute() and ".." not in path.parts


def recover(folder: Path, name: str = JOURNAL_FILE) -> str | None:
    """Finish a write interrupted in ``folder`` (hold its lock); returns a line saying what was finished."""
    journal = pending(folder, name)
    if journal is None:
        return None
    journal.finish()
    return f"{folder}: finished an interrupted {journal.what}"
