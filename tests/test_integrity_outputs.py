"""No data loss: a command writes only into a folder it created or marked as its own, never over a file someone
else wrote or edited, and every multi-step write survives a kill at any step (the next command finishes it and
says so, and ``check`` reports it until then)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from submissions import random_submission

from hierarcaps import outputs
from hierarcaps.cli import main
from hierarcaps.errors import HierarcapsError
from hierarcaps.leaderboard import board, review
from hierarcaps.leaderboard.submission import write_template

DIM = 8


def foreign_folder(path: Path) -> Path:
    """A folder of someone's own files."""
    (path / "notes").mkdir(parents=True)
    (path / "README.md").write_text("my notes\n")
    (path / "notes" / "model").write_text("precious\n")
    (path / "shards").mkdir()
    (path / "blocks").mkdir()
    return path


def untouched(path: Path) -> bool:
    return (path / "README.md").read_text() == "my notes\n" and (path / "notes" / "model").read_text() == "precious\n" \
        and sorted(p.name for p in path.iterdir()) == ["README.md", "blocks", "notes", "shards"]


def test_build_and_add_refuse_a_folder_that_is_not_a_board(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = foreign_folder(tmp_path / "docs")
    assert main(["leaderboard", "build", "--board", str(folder)]) == 1
    assert "not written by hierarcaps" in capsys.readouterr().err
    sub = random_submission(tmp_path / "sub", dim=DIM, link="")
    assert main(["leaderboard", "add", str(sub), "--board", str(folder)]) == 1
    assert untouched(folder)


def test_template_never_overwrites_a_filled_submission(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_template(tmp_path / "sub")
    assert write_template(folder) == folder                             # its own unedited files: rewritten
    meta = json.loads((folder / "submission.json").read_text())
    meta["test_set_not_used_for_training_or_tuning"] = True
    (folder / "submission.json").write_text(json.dumps(meta))
    assert main(["leaderboard", "template", str(folder)]) == 1
    assert "edited by someone else" in capsys.readouterr().err
    assert json.loads((folder / "submission.json").read_text())["test_set_not_used_for_training_or_tuning"] is True
    assert main(["leaderboard", "template", str(foreign_folder(tmp_path / "mine"))]) == 1
    assert untouched(tmp_path / "mine")


def memory_source(path: Path, seed: int, n: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, image=rng.standard_normal((n, DIM)).astype(np.float32),
             text=rng.standard_normal((n, DIM)).astype(np.float32),
             ids=np.array([f"s{seed}-{i}" for i in range(n)]), captions=np.array([f"caption {i}" for i in range(n)]))
    return path


def test_reco_memory_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = foreign_folder(tmp_path / "mine")
    assert main(["reco", "memory", str(memory_source(tmp_path / "a.npz", 0)), "--out", str(folder)]) == 1
    assert "not written by hierarcaps" in capsys.readouterr().err and untouched(folder)
    assert main(["reco", "memory", str(memory_source(tmp_path / "b.npz", 1)), "--out", str(tmp_path / "mem")]) == 0
    assert main(["reco", "memory", str(tmp_path / "a.npz"), "--out", str(tmp_path / "mem")]) == 0   # its own


def test_two_memory_builds_into_one_folder_take_turns_and_leave_one_source(tmp_path: Path) -> None:
    sources = [memory_source(tmp_path / f"{n}.npz", n, n=3000) for n in range(2)]
    runs = [subprocess.Popen([sys.executable, "-m", "hierarcaps", "reco", "memory", str(source), "--out",
                              str(tmp_path / "mem")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for source in sources]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    image, text = (np.load(tmp_path / "mem" / f"{m}.npy") for m in ("image", "text"))
    import pyarrow.parquet as pq

    ids = pq.read_table(tmp_path / "mem" / "meta.parquet").column("id").to_pylist()
    seed = int(ids[0][1])
    with np.load(sources[seed]) as data:
        for name, stored in (("image", image), ("text", text)):
            expected = data[name] / np.linalg.norm(data[name], axis=1, keepdims=True)
            assert np.allclose(stored, expected, atol=1e-6), name          # both sides from the one source
    assert all(i.startswith(f"s{seed}-") for i in ids)


def test_finetune_refuses_an_output_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = foreign_folder(tmp_path / "mine")
    assert main(["finetune", "--model", "minilm", "--steps", "1", "--out", str(folder), "--quiet"]) == 1
    assert "not written by hierarcaps" in capsys.readouterr().err and untouched(folder)


def interrupted(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Make the next journaled write die after ``after`` of its steps, as a kill would."""
    finish = outputs.Journal.finish

    def dying(journal: outputs.Journal) -> None:
        steps = journal.steps
        journal.steps = steps[:after]
        finish(journal)
        journal.steps = steps
        journal._record()
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.Journal, "finish", dying)


@pytest.mark.parametrize("after", [0, 1, 2])
def test_a_replace_killed_at_any_step_leaves_the_old_entry_or_the_new_one(tmp_path: Path, after: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lb = tmp_path / "lb"
    folder, _ = board.add(random_submission(tmp_path / "old", seed=0, dim=DIM, link=""), lb)
    board.build(lb)
    new = random_submission(tmp_path / "new", seed=1, dim=DIM, link="")
    with monkeypatch.context() as patch:
        interrupted(patch, after)
        with pytest.raises(KeyboardInterrupt):
            board.add(new, lb, replace="random-16/r1")
    problems = review.check(lb)
    assert any("an interrupted add" in p for p in problems)
    notes: list[str] = []
    board.build(lb, notes=notes)
    assert notes == [f"{lb}: finished an interrupted add of entries/random-16/r1"]
    stored = json.loads((folder / "result.json").read_text())
    assert stored["embeddings_sha256"] == board.validate(new)[0].embeddings_sha256     # the new entry, whole
    assert review.check(lb) == [] and not (lb / board.STAGING).exists()


def test_an_export_killed_between_its_renames_is_finished_by_the_next_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.data.hf import export

    export(tmp_path / "hc", configs=("test",), images="skip")
    with monkeypatch.context() as patch:
        interrupted(patch, 1)                          # the old export moved aside, the new one not yet in place
        with pytest.raises(KeyboardInterrupt):
            export(tmp_path / "hc", configs=("test", "test_expanded"), images="skip", overwrite=True)
    assert not (tmp_path / "hc").exists()
    export(tmp_path / "hc", configs=("test",), images="skip", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hc"]
    assert (tmp_path / "hc" / "data" / "test").is_dir()


def test_a_journal_step_outside_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / outputs.JOURNAL_FILE).write_text(json.dumps({"what": "x", "steps": [["remove", "../etc"]]}))
    with pytest.raises(HierarcapsError, match="does not write"):
        outputs.recover(tmp_path)
    assert os.path.exists(tmp_path / outputs.JOURNAL_FILE)
