"""Every input gets its own line: nothing a user can hand over reaches the "unexpected error (a bug)" fallback,
every reader is bounded (header width, special files, resamples), board files are held to one standard at every
read (UTF-8 without BOM, strict JSON, typed fields), and what ``check`` accepts is what ``build`` renders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from measured_cli import assert_one_line_failure
from submissions import MODEL, random_submission

from hierarcaps.cli import main
from hierarcaps.data import Hierarchy
from hierarcaps.data.csvio import parse_file
from hierarcaps.errors import DataError, HierarcapsError
from hierarcaps.leaderboard import board, entries, review
from hierarcaps.leaderboard.validate import validate

DIM = 8


# -- hierarchy files ------------------------------------------------------------------------------------------

def test_a_header_of_a_million_columns_is_refused_within_budget(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(10**6)) + "\n")
    assert_one_line_failure(["validate", str(path)], tmp_path, "columns, more than the limit of 1024")


def test_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.csv"
    path.write_text("id,captions,captions\n0,a => b => c => d,w => x => y => z\n")
    with pytest.raises(DataError, match="row 0, field 'captions': the column appears twice"):
        parse_file(path)


@pytest.mark.parametrize("spelled", ["a\u00a0goat", "a\u200b goat", "a goat\u200b", "a\u3000goat", "a  goat",
                                     "A GOAT"])
def test_a_tier_repeated_with_other_spaces_is_a_repeat(spelled: str) -> None:
    record = Hierarchy("0", ("animal", "a goat", spelled, "a goat on an island"))
    assert ("positive", "tier 3 repeats tier 2") in record.problems()


def test_validate_refuses_a_negative_tier_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["validate", str(tmp_path / "x.csv"), "--tiers", "-1"])
    assert info.value.code == 2 and "outside 0..64" in capsys.readouterr().err


# -- prompts and templates ------------------------------------------------------------------------------------

def test_a_demonstration_holding_the_tier_separator_is_refused(tmp_path: Path) -> None:
    from hierarcaps.generation.prompts import builtin_folder, load_prompts

    shutil.copytree(builtin_folder(), tmp_path / "prompts")
    examples = json.loads((tmp_path / "prompts" / "examples.json").read_text())
    examples[1]["tier_2"] = "dog => puppy"
    (tmp_path / "prompts" / "examples.json").write_text(json.dumps(examples))
    with pytest.raises(DataError, match="row 2, field 'tier_2': contains the tier separator"):
        load_prompts(tmp_path / "prompts")


@pytest.mark.parametrize("line", ["a photo of a {c}.", "a {} in {place}.", "a photo of {} and {}."])
def test_a_zero_shot_template_with_another_placeholder_is_refused(tmp_path: Path, line: str) -> None:
    from hierarcaps.harness.zeroshot import read_templates

    (tmp_path / "t.txt").write_text(f"a photo of a {{}}.\n{line}\n")
    with pytest.raises(DataError, match="row 2: a template holds exactly one"):
        read_templates(tmp_path / "t.txt")


# -- model folders --------------------------------------------------------------------------------------------

def test_a_model_folder_with_a_device_link_or_a_pipe_is_refused_before_loading(tmp_path: Path) -> None:
    from hierarcaps.models.text import packaged_minilm_path

    zero = tmp_path / "zero"
    shutil.copytree(packaged_minilm_path(), zero)
    (zero / "config.json").unlink()
    (zero / "config.json").symlink_to("/dev/zero")
    assert_one_line_failure(["evaluate", "--model", str(zero)], tmp_path, "config.json is not a regular file")
    pipe = tmp_path / "pipe"
    shutil.copytree(packaged_minilm_path(), pipe)
    (pipe / "modules.json").unlink()
    os.mkfifo(pipe / "modules.json")
    assert_one_line_failure(["evaluate", "--model", str(pipe)], tmp_path, "modules.json is not a regular file")


def test_a_device_torch_cannot_use_is_refused_before_anything_loads(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_one_line_failure(["evaluate", "--device", "cuda"], tmp_path, "--device cuda: torch sees 0 CUDA GPU(s)")
    assert_one_line_failure(["evaluate", "--device", "tpu"], tmp_path, "not a device")


# -- submissions and board files ------------------------------------------------------------------------------

def make(folder: Path, **model: object) -> Path:
    return random_submission(folder, dim=DIM, **{**MODEL, "link": "", **model})


def rewrite(folder: Path, name: str, text: str | bytes) -> None:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


@pytest.mark.parametrize(("text", "expect"), [
    ('{"model": {"name": "a\\ud800b"}}', "lone surrogate"),
    ('{"model": {}, "model": {}}', "appears twice"),
    ('{"model": NaN}', "NaN"),
    (b'\xef\xbb\xbf{"model": {}}', "byte-order mark"),
])
def test_submission_json_is_strict_json(tmp_path: Path, text: str | bytes, expect: str) -> None:
    folder = make(tmp_path / "sub")
    rewrite(folder, "submission.json", text)
    sub, report = validate(folder)
    assert sub is None and any(expect in p for p in report.problems), report.problems


def test_bfloat16_safetensors_are_read_exactly(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = make(tmp_path / "sub")
    with np.load(folder / "embeddings.npz") as data:
        arrays = {k: torch.from_numpy(data[k]).to(torch.bfloat16) for k in data.files}
    (folder / "embeddings.npz").unlink()
    save_file(arrays, str(folder / "embeddings.safetensors"))
    sub, report = validate(folder)
    assert sub is not None, report.problems
    widened = arrays["text"].float().numpy()
    assert np.allclose(sub.text, widened / np.linalg.norm(widened, axis=1, keepdims=True), atol=1e-6)


def test_an_npz_holding_a_member_twice_is_refused(tmp_path: Path) -> None:
    import zipfile

    folder = make(tmp_path / "sub")
    with zipfile.ZipFile(folder / "embeddings.npz", "a") as archive, pytest.warns(UserWarning):
        archive.writestr("text.npy", archive.read("text.npy"))
    sub, report = validate(folder)
    assert sub is None and any("appears twice" in p for p in report.problems), report.problems


def test_a_bad_typed_model_field_is_refused_by_add_not_by_the_next_build(tmp_path: Path) -> None:
    folder = make(tmp_path / "sub")
    meta = json.loads((folder / "submission.json").read_text())
    meta["model"]["fingerprint"] = 5
    rewrite(folder, "submission.json", json.dumps(meta))
    with pytest.raises(HierarcapsError, match=r"model\.fingerprint: must be a string"):
        board.add(folder, tmp_path / "lb")
    assert not list((tmp_path / "lb").glob("entries/*/*"))


@pytest.mark.parametrize(("edit", "expect"), [
    (lambda text: b"\xef\xbb\xbf" + text, "byte-order mark"),
    (lambda text: text.replace(b'"schema_version": 2', b'"schema_version": 2, "schema_version": 2'),
     "appears twice"),
    (lambda text: text.replace(b'"value": 0', b'"value": NaN', 1), "NaN"),
    (lambda text: text + b" " * (5 * 2**20), "over the limit"),
])
def test_a_board_file_that_check_refuses_build_refuses_too(tmp_path: Path, edit, expect: str) -> None:
    lb = tmp_path / "lb"
    folder, _ = board.add(make(tmp_path / "sub"), lb)
    board.build(lb)
    result = folder / "result.json"
    result.write_bytes(edit(result.read_bytes()))
    problems = review.check(lb)
    assert any(expect in p for p in problems), problems
    with pytest.raises(HierarcapsError, match="nothing rendered"):
        board.build(lb)


def test_no_board_file_holds_a_non_finite_number() -> None:
    for path in Path(__file__).resolve().parents[1].glob("leaderboard/entries/*/*/*.json"):
        board.jsonfile.read(path, limit=2**24, what="board file")       # strict: NaN or Infinity would fail


def test_an_entry_tied_with_a_reference_shares_its_place_and_follows_it() -> None:
    from hierarcaps.leaderboard.render import places, rows
    from hierarcaps.results import Dataset, Result

    references = entries.reference_rows()
    tied = Result.scored({"name": "aaa length only", "revision": "r1", "parameters": 0}, references["length_words"],
                         Dataset("test", 1000, "sha256:x"), steps=50, root_text="", resamples=10, seed=0, level=0.95,
                         version="test")
    table = rows([tied], references)
    names = [row["name"] for row in table]
    where = names.index("aaa length only")
    assert table[where - 1]["reference"] and places(table)[where] == places(table)[where - 1]


# -- memories -------------------------------------------------------------------------------------------------

def npz_source(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, image=rng.standard_normal((n, DIM)).astype(np.float32),
             text=rng.standard_normal((n, DIM)).astype(np.float32))
    return path


@pytest.mark.parametrize(("n", "options", "expect"), [
    (0, [], "the memory would hold no items"),
    (10, ["--index", "ivf"], "--index ivf needs at least 12 items"),
    (300, ["--index", "ivfpq"], None),
    (100, ["--index", "ivfpq"], "--index ivfpq needs at least 256 items"),
])
def test_a_memory_that_cannot_be_built_says_why(tmp_path: Path, n: int, options: list[str], expect: str | None,
                                                capsys: pytest.CaptureFixture) -> None:
    code = main(["reco", "memory", str(npz_source(tmp_path / "s.npz", n)), "--out", str(tmp_path / "m"), *options])
    err = capsys.readouterr().err
    assert (code, expect is None or expect in err) == (1 if expect else 0, True), err
    assert "a bug" not in err


def test_a_memory_whose_metadata_is_short_and_a_k_beyond_it_say_why(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from hierarcaps.reco.memory import Memory

    assert main(["reco", "memory", str(npz_source(tmp_path / "s.npz", 30)), "--out", str(tmp_path / "m")]) == 0
    with pytest.raises(HierarcapsError, match="k=40 neighbours asked of a memory of 30 items"):
        Memory(tmp_path / "m").search(np.ones((1, DIM), np.float32), "image", 40)
    table = pq.read_table(tmp_path / "m" / "meta.parquet")
    pq.write_table(table.slice(0, 20), tmp_path / "m" / "meta.parquet")
    with pytest.raises(HierarcapsError, match="20 rows for the memory's 30 items"):
        Memory(tmp_path / "m")


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 1 MiB file system of its own (skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small file system here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_during_a_memory_build_is_one_line_and_leaves_no_temporary_file(
        tmp_path: Path, full_disk: Path, capsys: pytest.CaptureFixture) -> None:
    source = npz_source(tmp_path / "s.npz", 3000)        # 3000 x 8 x 4 bytes a side: twice what fits
    rng = np.random.default_rng(1)
    np.savez(source, image=rng.standard_normal((3000, 64)).astype(np.float32),
             text=rng.standard_normal((3000, 64)).astype(np.float32))
    assert main(["reco", "memory", str(source), "--out", str(full_disk / "m")]) == 1
    err = capsys.readouterr().err
    assert "no space left" in err.lower() and "a bug" not in err and len(err.strip().splitlines()) == 1, err
    assert not [p for p in (full_disk / "m").rglob("*") if p.name.endswith(".tmp")]


def test_large_resamples_keep_the_bootstrap_in_bounded_memory(tmp_path: Path) -> None:
    from hierarcaps.metrics import bootstrap

    chunks = bootstrap.resample_counts(4000, 10**6, 0)
    first = next(chunks)
    assert first.nbytes <= bootstrap.CHUNK_CELLS * 8                   # 64 MiB a chunk, not 32 GB at once
