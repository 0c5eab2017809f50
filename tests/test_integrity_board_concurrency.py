"""A board two people can write at once: adds and builds take the board's lock, each add stages in its own
folder, and a lost race ends in one line with nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from submissions import random_submission

from hierarcaps import _io, outputs
from hierarcaps._io import sha256_file
from hierarcaps.errors import HierarcapsError
from hierarcaps.leaderboard import board, review

DIM = 8


def make(folder: Path, name: str, seed: int) -> Path:
    return random_submission(folder, seed=seed, dim=DIM, name=name, link="")


def add_in_processes(paths: list[Path], lb: Path) -> list[subprocess.CompletedProcess]:
    """``hierarcaps leaderboard add`` for each path, all started at once."""
    processes = [subprocess.Popen([sys.executable, "-m", "hierarcaps", "leaderboard", "add", str(p), "--board",
                                   str(lb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for p in paths]
    done = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


@pytest.mark.integration
def test_two_adds_of_different_entries_at_once_both_land(tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    runs = add_in_processes([make(tmp_path / "a", "model-a", 0), make(tmp_path / "b", "model-b", 1)], lb)
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert sorted(p.parent.parent.name for p in lb.glob("entries/*/*/result.json")) == ["model-a", "model-b"]
    assert not (lb / ".staging").exists()
    assert review.check(lb) == [f"{lb / name}: out of date with the entries (run `hierarcaps leaderboard build`)"
                               for name in ("README.md", "index.html")]


@pytest.mark.integration
def test_two_adds_of_one_entry_at_once_give_one_entry_and_one_answer_each(tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    same = make(tmp_path / "a", "model-a", 0)
    runs = add_in_processes([same, same], lb)
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert sorted(r.stdout.split(":")[0] for r in runs) == ["added", "unchanged"]
    other = make(tmp_path / "c", "model-a", 2)                  # same name and revision, other embeddings
    runs = add_in_processes([other], lb)
    assert runs[0].returncode == 1 and len(runs[0].stderr.strip().splitlines()) == 1
    assert "already holds another result" in runs[0].stderr
    stored = json.loads(next(lb.glob("entries/*/*/result.json")).read_text())
    assert stored["embeddings_sha256"] == sha256_file(same / "embeddings.npz")     # the first entry is kept


def test_an_add_waits_for_the_lock_and_one_that_cannot_get_it_ends_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lb = tmp_path / "lb"
    first, second = make(tmp_path / "a", "model-a", 0), make(tmp_path / "b", "model-b", 1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with _io.exclusive_lock(lb / outputs.LOCK_FILE, what="test"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    monkeypatch.setattr(outputs, "folder_lock", lambda folder, what: _io.exclusive_lock(
        folder / outputs.LOCK_FILE, what=what, timeout=0.5))
    monkeypatch.setattr(board, "folder_lock", outputs.folder_lock)
    with pytest.raises(HierarcapsError, match="is busy") as info:
        board.add(first, lb)
    assert "\n" not in str(info.value)
    assert not list(lb.glob("entries/*/*"))                   # nothing half-written by the refused add
    release.set()
    holder.join()
    assert board.add(first, lb)[1] == "added" and board.add(second, lb)[1] == "added"    # the retry lands
    board.build(lb)
    assert review.check(lb) == []
