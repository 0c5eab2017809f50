"""What a submission pull request runs: ``hierarcaps leaderboard check`` re-scores entries from the embeddings they
keep, checks every entry and the pages, and prints a markdown summary; it passes a good entry and fails a
tampered result or a stale page with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from measured_cli import assert_one_line_failure, run_measured
from submissions import random_submission

from hierarcaps.leaderboard import board, review


@pytest.fixture
def good_board(tmp_path: Path) -> Path:
    """A board with one entry added and its pages built, as a submitter leaves it before the pull request."""
    lb = tmp_path / "lb"
    board.add(random_submission(tmp_path / "sub", name="random-16"), lb)
    board.build(lb)
    return lb


def entry(lb: Path) -> Path:
    return lb / "entries" / "random-16" / "r1"


def test_a_good_entry_passes_with_a_summary_that_ranks_it(good_board: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in entry(good_board).iterdir()) == [
        "embeddings.npz", "image_ids.txt", "result.json", "submission.json", "text_ids.txt"]
    summary = tmp_path / "summary.md"
    code, stdout, stderr, _, _ = run_measured(["leaderboard", "check", "--board", str(good_board), "--summary",
                                               str(summary)], tmp_path)
    assert code == 0, stderr
    assert "Entries re-scored from their embeddings: 1" in stdout and "All checks passed" in stdout
    assert "| # | model |" in stdout and "random-16" in stdout
    assert summary.read_text() in stdout


def test_a_tampered_result_fails_with_one_line_naming_the_metric(good_board: Path, tmp_path: Path) -> None:
    result_file = entry(good_board) / "result.json"
    result = json.loads(result_file.read_text())
    result["metrics"]["d_corr"]["value"] = 0.99
    result_file.write_text(json.dumps(result))
    board.build(good_board)                          # pages rebuilt from the tampered result: still caught
    line = assert_one_line_failure(["leaderboard", "check", "--board", str(good_board)], tmp_path,
                                   "does not match its embeddings")
    assert "metrics.d_corr.value: stored 0.99, re-scored" in line


def test_swapped_embeddings_fail_too(good_board: Path, tmp_path: Path) -> None:
    other = random_submission(tmp_path / "other", seed=1)
    shutil.copy(other / "embeddings.npz", entry(good_board) / "embeddings.npz")
    assert_one_line_failure(["leaderboard", "check", "--board", str(good_board)], tmp_path,
                            "does not match its embeddings")


def test_a_stale_page_fails_with_one_line(good_board: Path, tmp_path: Path) -> None:
    readme = good_board / "README.md"
    readme.write_text(readme.read_text().replace("random-16", "random-17"))
    assert_one_line_failure(["leaderboard", "check", "--board", str(good_board)], tmp_path,
                            "README.md: out of date with the entries")


def test_an_entry_without_embeddings_cannot_be_checked(good_board: Path, tmp_path: Path) -> None:
    (entry(good_board) / "embeddings.npz").unlink()
    assert_one_line_failure(["leaderboard", "check", "--board", str(good_board), "--entry",
                             str(entry(good_board))], tmp_path, "no embeddings to re-score")


def test_changed_since_re_scores_only_the_pull_requests_entries(good_board: Path, tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "base")
    git("add", "lb")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "entry")
    assert review.changed_entries(good_board, "HEAD~1") == [entry(good_board).resolve()]
    assert review.changed_entries(good_board, "HEAD") == []
    with pytest.raises(Exception, match="not a git revision"):
        review.changed_entries(good_board, "--output=/tmp/x")
    code, stdout, _, _, _ = run_measured(["leaderboard", "check", "--board", str(good_board), "--changed-since",
                                          "HEAD~1"], tmp_path)
    assert code == 0 and "Entries re-scored from their embeddings: 1" in stdout


def test_adding_the_same_submission_again_is_unchanged(good_board: Path, tmp_path: Path) -> None:
    assert board.add(tmp_path / "sub", good_board)[1] == "unchanged"


def test_the_shipped_board_passes_its_own_check(tmp_path: Path) -> None:
    from conftest import REPO

    lb = tmp_path / "lb"
    shutil.copytree(REPO / "leaderboard", lb)
    outcome = review.review(lb)
    assert outcome.problems == [] and len(outcome.rescored) == len(list(lb.glob("entries/*/*")))


def test_a_metric_added_by_one_declaration_reaches_the_board_through_rescore(tmp_path: Path, monkeypatch) -> None:
    """ARCHITECTURE's metric recipe: one ``MetricInfo`` in the catalogue; every entry then fails ``check`` (its
    stored result lacks the metric) until ``leaderboard rescore`` rewrites the results and the pages."""
    import numpy as np
    from conftest import REPO

    from hierarcaps.cli import main
    from hierarcaps.metrics import catalogue

    lb = tmp_path / "lb"
    shutil.copytree(REPO / "leaderboard", lb)
    assert board.rescore(lb) == []                    # the control: nothing to rewrite before the change
    spread = catalogue.MetricInfo("radius_spread", "Δr", "distance to the root of tier 4 minus tier 1",
                                  lambda units: units.radii[:, -1] - units.radii[:, 0], unit="distance")
    monkeypatch.setitem(catalogue.METRICS, spread.name, spread)

    problems = review.check(lb)
    entries = sorted(lb.glob("entries/*/*"))
    assert len(problems) == len(entries) == 2
    assert all("radius_spread: missing" in line for line in problems)

    assert main(["leaderboard", "rescore", "--board", str(lb)]) == 0
    assert review.check(lb) == []
    for folder in entries:
        result = json.loads((folder / "result.json").read_text())
        assert np.isfinite(result["metrics"]["radius_spread"]["value"])
    assert "Δr" in (lb / "README.md").read_text()
