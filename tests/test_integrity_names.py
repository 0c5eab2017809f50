"""Names that impersonate an entry or break a checkout, and values echoed into a terminal.

Names are NFKC-normalised, may hold nothing a reader cannot see, never make a folder Windows reserves, and an
entry whose name looks like an existing one (same confusable skeleton) is refused, as registries do.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from submissions import random_submission

from hierarcaps.cli import main
from hierarcaps.errors import HierarcapsError
from hierarcaps.leaderboard import board, review
from hierarcaps.leaderboard.names import entry_folder, name_problem, slug
from hierarcaps.leaderboard.validate import validate
from hierarcaps.textsafe import escape_controls, look_alike, skeletons

DIM = 8


def make(folder: Path, name: str, revision: str = "r1", seed: int = 0) -> Path:
    return random_submission(folder, seed=seed, dim=DIM, name=name, revision=revision, link="")


@pytest.fixture(scope="module")
def board_with_minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("names")
    lb = root / "lb"
    board.add(make(root / "original", "MiniLM-base"), lb)
    return lb


@pytest.mark.parametrize(("name", "revision"), [
    ("MiniLM-base", "rl"),                                # revision "rl" looks like "r1"
    ("M\u0456niLM-base", "r1"),                           # Cyrillic і
    ("MINILM-BASE", "r1"),                                # a case twin: one folder on macOS and Windows
    ("MiniLM_base", "r1"),                                # separators
    ("MiniLM-bas\u0435", "r2"),                           # Cyrillic е, another revision: still the look-alike model
    ("Min\u0131LM-base", "r1"),                           # dotless ı
    ("MiniLM-base", "R1"),                                # a case twin of the revision
    ("MiniLM\u2010base", "r1"),                           # a Unicode hyphen
    ("MiniLM\u2014base", "r1"),                           # an em dash (drawn as a katakana mark by the data)
    ("MiniLM\u2212base", "r1"),                           # a minus sign
    ("MiniLM\u3000base", "r1"),                           # an ideographic space
    ("\u039ciniLM-base", "r1"),                           # Greek capital Mu
    ("\u13b7iniLM-base", "r1"),                           # Cherokee letter MU
    ("MiniLM-base", "\u0433\u0031"),                     # a Cyrillic г for the r of the revision
])
def test_a_name_that_looks_like_an_entry_is_refused(board_with_minilm: Path, tmp_path: Path, name: str,
                                                    revision: str) -> None:
    sub = make(tmp_path / "sub", name, revision, seed=1)
    with pytest.raises(HierarcapsError, match="looks the same") as info:
        board.add(sub, board_with_minilm)
    assert "\n" not in str(info.value)
    assert len(list(board_with_minilm.glob("entries/*/*"))) == 1


def test_a_distinct_name_and_a_new_revision_of_the_same_model_are_welcome(board_with_minilm: Path,
                                                                          tmp_path: Path) -> None:
    assert board.add(make(tmp_path / "a", "MiniLM-large", seed=2), board_with_minilm)[1] == "added"
    assert board.add(make(tmp_path / "b", "MiniLM-base", "r2", seed=3), board_with_minilm)[1] == "added"
    board.build(board_with_minilm)
    assert review.check(board_with_minilm) == []


def test_nfc_and_nfd_spellings_are_one_name_and_one_folder(tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    nfc, nfd = unicodedata.normalize("NFC", "Café-CLIP"), unicodedata.normalize("NFD", "Café-CLIP")
    assert nfc != nfd
    folder, _ = board.add(make(tmp_path / "a", nfc), lb)
    with pytest.raises(HierarcapsError, match="already holds another result"):
        board.add(make(tmp_path / "b", nfd, seed=1), lb)
    assert json.loads((folder / "result.json").read_text())["model"]["name"] == nfc


@pytest.mark.parametrize(("name", "expect"), [
    ("evil\u202egnp.exe", "cannot see"),                   # right-to-left override
    ("model\u200b", "cannot see"),                         # zero-width space
    ("model\x85next", "cannot see"),                       # a C1 control (NEL)
    ("model\x1b[2Jclear", "cannot see"),                   # a terminal escape
    ("CON", "Windows reserves"),
    ("nul.txt", "Windows reserves"),
    ("LPT1", "Windows reserves"),
    ("com\u00b9", "Windows reserves"),                     # COM¹ is COM1 after NFKC
])
def test_invisible_characters_and_reserved_device_names_are_refused(tmp_path: Path, name: str, expect: str) -> None:
    sub, report = validate(make(tmp_path / "sub", name))
    assert sub is None and any(expect in p for p in report.problems), report.problems
    assert all("\x1b" not in p and "\u202e" not in p for p in map(escape_controls, report.problems))


def test_values_echoed_by_the_cli_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make(tmp_path / "sub", "fine-model")
    ids = (folder / "text_ids.txt").read_text().splitlines()
    ids[0] = "\x1b]0;pwned\x07\x1b[31mred\u202e"
    (folder / "text_ids.txt").write_text("\n".join(ids) + "\n")
    assert main(["leaderboard", "validate", str(folder)]) == 1
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\u202e" not in out.out + out.err
    assert "\\x1b]0;pwned" in out.out


NAMES = st.text(st.characters(codec="utf-8"), min_size=0, max_size=40) | st.sampled_from(
    ["CON", "a/../b", "..", ".", "\u202e", "Ｍｉｎｉ", "aux.json", " ", "a\u0301"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, revision=NAMES)
def test_fuzzed_names_are_refused_or_make_a_safe_folder_inside_entries(tmp_path: Path, name: str,
                                                                       revision: str) -> None:
    problems = [p for p in (name_problem(name), name_problem(revision)) if p is not None]
    if problems:
        return
    folder = entry_folder(tmp_path, name, revision)
    assert folder.parent.parent == tmp_path / "entries"
    for part in folder.parts[-2:]:
        assert part == slug(part) and part.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in part)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_a_skeleton_is_blind_to_case_normal_form_and_separators(text: str) -> None:
    assert look_alike(text, text.casefold()) and look_alike(text, text.upper())
    assert skeletons(unicodedata.normalize("NFD", text)) == skeletons(unicodedata.normalize("NFC", text))
    assert skeletons(text.replace(" ", "_")) == skeletons(text.replace(" ", "-"))


def test_the_entries_of_a_board_edited_by_hand_are_checked_for_look_alikes(board_with_minilm: Path,
                                                                           tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    shutil.copytree(board_with_minilm, lb)
    twin = make(tmp_path / "twin", "MiniLM-base", seed=9)
    moved = tmp_path / "lb2"
    board.add(twin, moved)
    source = next(moved.glob("entries/*/*"))
    target = lb / "entries" / "M_niLM-base" / "r1"
    shutil.copytree(source, target)
    result = json.loads((target / "result.json").read_text())
    result["model"]["name"] = "M\u0456niLM-base"
    (target / "result.json").write_text(json.dumps(result))
    assert any("looks like" in p for p in review.check(lb)), review.check(lb)
