"""Hostile submissions and careless files: a crafted file for every class of attack or accident, and fuzzing.

Bombs run in a fresh process through the CLI, so their peak memory (the child's own, from wait4) and wall
time are measured against a budget (1 GB, 20 s with the interpreter's start; unbounded, they ran for minutes
at gigabytes): each ends with one line per problem and exit 1.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
import struct
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierarcaps.cli import main
from hierarcaps.data import load_official
from hierarcaps.data.csvio import parse_file
from hierarcaps.data.tables import MAX_FIELD_CHARS
from hierarcaps.errors import DataError, HierarcapsError
from hierarcaps.leaderboard import board, entries, review
from hierarcaps.leaderboard.submission import write_template
from hierarcaps.leaderboard.validate import validate

from . import submissions
from .measured_cli import assert_refused_within_budget

DIM = 8
MODEL = {"name": "fuzz-model", "revision": "r1", "parameters": 5, "licence": "mit",
         "link": "https://example.org/fuzz", "training_data": "none"}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    return submissions.unit(rng, n, DIM)


def make_submission(folder: Path, seed: int = 0, **model: object) -> Path:
    return submissions.random_submission(folder, seed=seed, dim=DIM, **{**MODEL, **model})


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_submission(tmp_path_factory.mktemp("valid") / "sub")


def problems_of(path: Path) -> list[str]:
    sub, report = validate(path)
    assert sub is None, "expected a rejection"
    return report.problems


def edited(valid: Path, target: Path, **meta_changes: object) -> Path:
    """A copy of the valid submission with submission.json keys (or model keys, as model__key) changed."""
    import shutil

    shutil.copytree(valid, target)
    meta = json.loads((target / "submission.json").read_text())
    for key, value in meta_changes.items():
        if key.startswith("model__"):
            meta["model"][key.removeprefix("model__")] = value
        else:
            meta[key] = value
    (target / "submission.json").write_text(json.dumps(meta))
    return target


# -- archives and embedded arrays: bombs refused before the bytes are inflated ----------------------------

def tar_header_only(path: Path, declared: int, opener) -> Path:
    """A tar whose one member declares ``declared`` bytes but carries only a few."""
    info = tarfile.TarInfo("sub/embeddings.npz")
    info.size = declared
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with opener(path, "wb") as handle:
        handle.write(header + b"\0" * 4096)
    return path


def test_a_bzip2_stream_named_tar_gz_and_a_16_gib_member_are_refused_at_once(tmp_path: Path) -> None:
    bzip = tar_header_only(tmp_path / "bz.tar.gz", 16 * 2**30, bz2.open)          # not gzip: refused
    assert_refused_within_budget(["leaderboard", "validate", str(bzip)], tmp_path, "unreadable archive")
    huge = tar_header_only(tmp_path / "huge.tar.gz", 16 * 2**30, gzip.open)        # the header alone refuses it
    assert_refused_within_budget(["leaderboard", "validate", str(huge)], tmp_path, "over the limit")


def test_a_gzip_bomb_under_honest_headers_is_stopped_by_the_ratio(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    zeros = 200 * 2**20
    with gzip.open(bomb, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w|") as archive:
        info = tarfile.TarInfo("sub/embeddings.npz")
        info.size = zeros

        class Zeros(io.RawIOBase):
            left = zeros

            def read(self, n: int = -1) -> bytes:
                n = min(self.left, 1 << 20 if n is None or n < 0 else n)
                self.left -= n
                return b"\0" * n

        archive.addfile(info, Zeros())
    assert bomb.stat().st_size < 1_000_000
    assert_refused_within_budget(["leaderboard", "validate", str(bomb)], tmp_path, "compression ratio")


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode() + b" "
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npz_members_are_checked_from_their_headers_before_loading(valid: Path, tmp_path: Path) -> None:
    import shutil

    for name, member, expect in (
            ("rows", ("text.npy", npy_header((10**9, 512))), "more than the 4000"),
            ("dim", ("image.npy", npy_header((1000, 10**6))), "over the limit of"),
            ("extra", ("evil.npy", npy_header((1,))), "unknown array 'evil'"),
            ("object", ("text.npy", npy_header((4000,), "|O")), "dtype object")):
        folder = tmp_path / name
        shutil.copytree(valid, folder)
        with np.load(valid / "embeddings.npz") as data:
            arrays = {k: data[k] for k in data.files}
        with zipfile.ZipFile(folder / "embeddings.npz", "w", zipfile.ZIP_DEFLATED) as z:
            for key, array in arrays.items():
                if f"{key}.npy" != member[0]:
                    buffer = io.BytesIO()
                    np.save(buffer, array)
                    z.writestr(f"{key}.npy", buffer.getvalue())
            z.writestr(member[0], member[1] + b"\0" * 64)
        assert_refused_within_budget(["leaderboard", "validate", str(folder)], tmp_path, expect)


def test_parquet_bombs_extra_roots_and_unknown_columns_are_refused_from_metadata(valid: Path, tmp_path: Path) -> None:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    def folder_with(name: str, table: pa.Table) -> Path:
        folder = tmp_path / name
        shutil.copytree(valid, folder)
        for file in ("embeddings.npz", "text_ids.txt", "image_ids.txt"):
            (folder / file).unlink()
        pq.write_table(table, folder / "embeddings.parquet")
        return folder

    rows = 3_000_000                                     # dictionary-encoded: a small file, millions of rows
    kind = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int8)), pa.array(["text"]))
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(rows + 1, np.int32)), pa.array([], pa.float32()))
    bomb = folder_with("rows", pa.table({"kind": kind, "id": kind, "embedding": empty}))
    assert bomb.joinpath("embeddings.parquet").stat().st_size < 2_000_000
    assert_refused_within_budget(["leaderboard", "validate", str(bomb)], tmp_path, "rows, more than")

    records = load_official("test")
    rng = np.random.default_rng(0)
    text_ids = [f"{r.id}-{k}" for r in records for k in range(1, 5)]
    two_roots = folder_with("roots", pa.table({
        "kind": ["root", "root", *["text"] * 4000], "id": ["root", "root2", *text_ids],
        "embedding": [list(v) for v in unit(rng, 4002)]}))
    assert any("exactly one is required" in p for p in problems_of(two_roots))
    extra = folder_with("extra", pa.table({"kind": ["root"], "id": ["root"], "embedding": [[1.0] * DIM],
                                           "payload": ["x"]}))
    assert any("expected kind, id, embedding" in p for p in problems_of(extra))


# -- names, links, numbers, JSON: one line each, nothing written outside the board ---------------------------

@pytest.mark.parametrize(("field", "value", "expect"), [
    ("model__name", "..", "no letter or digit"),
    ("model__name", ".", "no letter or digit"),
    ("model__revision", "..", "no letter or digit"),
    ("model__name", "x" * 300, "over the limit of 100"),
    ("model__name", "a|b\n| injected | row |", "control characters"),
    ("model__name", "/home/someone/runs/random-init", "looks like a file path"),
    ("model__link", "javascript:alert(1)", "http:// or https://"),
    ("model__parameters", 10**400, "model.parameters: must be at least 0 and at most 10000000000000, not 1000"),
    ("model__parameters", -5, "model.parameters: must be at least 0 and at most 10000000000000, not -5"),
    ("model__name", "my-model", "template's placeholder"),
])
def test_bad_model_metadata_is_one_problem_line(valid: Path, tmp_path: Path, field: str, value: object,
                                                expect: str) -> None:
    folder = edited(valid, tmp_path / "sub", **{field: value})
    assert any(expect in p for p in problems_of(folder)), problems_of(folder)
    lb = tmp_path / "lb"
    with pytest.raises(HierarcapsError, match="invalid submission"):
        board.add(folder, lb)
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]              # nothing written anywhere


def test_deep_json_and_huge_integers_are_one_line_not_a_traceback(valid: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    for name, text, expect in (("deep", "[" * 30_000 + "]" * 30_000, "nested more than"),
                               ("digits", '{"model": ' + "9" * 5000 + "}", "not valid JSON")):
        folder = edited(valid, tmp_path / name)
        (folder / "submission.json").write_text(text)
        assert main(["leaderboard", "validate", str(folder)]) == 1
        out = capsys.readouterr().out
        assert expect in out and "Traceback" not in out


def test_an_unedited_template_is_refused_and_never_attests(tmp_path: Path) -> None:
    folder = write_template(tmp_path / "t")
    meta = json.loads((folder / "submission.json").read_text())
    assert meta["test_set_not_used_for_training_or_tuning"] is None
    rng = np.random.default_rng(0)
    np.savez(folder / "embeddings.npz", root=unit(rng, 1)[0], text=unit(rng, 4000), image=unit(rng, 1000))
    found = problems_of(folder)
    for key in ("name", "revision", "link", "training_data", "test_set_not_used_for_training_or_tuning"):
        assert any(key in p for p in found), (key, found)


def test_same_embeddings_under_another_name_are_refused_and_replace_names_only_its_own_entry(valid: Path,
                                                                                          tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    first, _ = board.add(valid, lb)
    renamed = edited(valid, tmp_path / "renamed", model__name="fuzz-model-renamed")
    with pytest.raises(HierarcapsError, match=r"fuzz-model/r1 already holds the same embeddings"):
        board.add(renamed, lb)
    with pytest.raises(HierarcapsError, match="replaces only this submission's own entry"):
        board.add(renamed, lb, replace="fuzz-model/r1")          # never another model's entry
    assert first.is_dir() and (first / "result.json").is_file()
    other = make_submission(tmp_path / "other", seed=5)          # the same name, other embeddings
    with pytest.raises(HierarcapsError, match="--replace fuzz-model/r1"):
        board.add(other, lb)
    folder, status = board.add(other, lb, replace="fuzz-model/r1")
    assert status == "replaced" and folder == first and (folder / "submission.json").is_file()
    assert not (lb / ".staging").exists()


def test_a_half_written_entry_is_reported_and_repaired(valid: Path, tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    folder, _ = board.add(valid, lb)
    (folder / "submission.json").unlink()                       # what a kill between two writes used to leave
    assert any("missing submission.json" in p for p in review.check(lb))
    assert board.add(valid, lb) == (folder, "added")
    board.build(lb)
    assert review.check(lb) == []


def test_crafted_entries_render_safely_and_references_rank_among_entries(valid: Path, tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    folder, _ = board.add(edited(valid, tmp_path / "pipe", model__name="a | b <script>x</script> [c](d)"), lb)
    result = json.loads((folder / "result.json").read_text())
    result["model"]["link"] = "javascript:alert(1)"              # a hand-edited entry in a pull request
    (folder / "result.json").write_text(json.dumps(result))
    assert any("http:// or https://" in p for p in review.check(lb))
    result["model"].update(link="https://example.org/ok", parameters=10**400)
    (folder / "result.json").write_text(json.dumps(result))
    assert any("parameters" in p for p in review.check(lb))
    with pytest.raises(HierarcapsError, match="nothing rendered"):       # build refuses; it never crashes
        board.build(lb)
    result["model"]["parameters"] = 5
    result["metrics"]["d_corr"] = {"value": "high", "ci95": None}
    (folder / "result.json").write_text(json.dumps(result))
    assert any("metrics.d_corr.value: must be a finite number" in p for p in review.check(lb))
    result["model"]["parameters"] = 10**400
    result["metrics"].pop("d_corr")
    (folder / "result.json").write_text(json.dumps(result))
    pages = entries.rendered(lb)                                    # and the pages still render, safely
    assert "javascript:" not in pages["index.html"] and "<script>x" not in pages["index.html"]
    table = [line for line in pages["README.md"].splitlines() if line.startswith("| ")]
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table}          # unescaped cell separators
    assert len(cells) == 1                                       # every row has the header's column count
    assert sum("(reference)" in line for line in table) == 3
    d_corr = [float(line.split(" | ")[6].split(" ")[0]) for line in table[1:] if line.split(" | ")[6] != "–"]
    assert d_corr == sorted(d_corr, reverse=True)                # ranked together, best first


# -- data files ----------------------------------------------------------------------------------------------

def test_csv_with_a_byte_order_mark_and_crlf_reads_and_long_cells_name_their_row(tmp_path: Path) -> None:
    rows = ["id,captions,image_url", "a,animal => goat => goat on island => a goat on an island,",
            "b,thing => car => red car => a red car parked," ]
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    records, found = parse_file(path)
    assert found == [] and [r.id for r in records] == ["a", "b"]
    big = "x" * (200 * 1024)                                     # over the csv module's default 128 KB
    path.write_text(rows[0] + "\n" + f"c,animal => goat => goat on island => {big},\n")
    assert parse_file(path)[1] == []
    path.write_text(rows[0] + "\n" + rows[1] + "\n" + f"d,a => b => c => {'y' * (MAX_FIELD_CHARS + 1)},\n")
    with pytest.raises(DataError, match=r"row 2.*over \d+ characters"):
        parse_file(path)


def test_validate_images_lists_every_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    records = load_official("test")[:3]
    images = tmp_path / "images"
    images.mkdir()
    (images / records[0].image_file).write_bytes(b"not the shipped bytes")
    (images / records[1].image_file).write_bytes(b"also wrong")
    data = tmp_path / "three.csv"
    from hierarcaps.data import write_csv

    write_csv(records, data, fmt="test")
    assert main(["validate", str(data), "--images", "--image-dir", str(images)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and all("row" in line for line in out)   # two wrong, one missing: all listed
    assert sum("SHA-256" in line for line in out) == 2 and sum("missing" in line for line in out) == 1


def test_a_killed_export_leaves_nothing_a_rerun_does_not_remove(tmp_path: Path) -> None:
    from hierarcaps.data.hf import export

    (tmp_path / ".out.staging-abc123").mkdir()                   # what a kill -9 mid-export leaves
    (tmp_path / ".out.staging-abc123" / "partial.parquet").write_bytes(b"x")
    export(tmp_path / "out", configs=("test",), images="skip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- fuzzing --------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                       max_size=4), max_leaves=20)


def no_stray_temp_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hc-submission-*")}


@FUZZ
@given(meta=st.dictionaries(st.sampled_from(["model", "protocol", "dataset_checksum", "text_radii", "modalities",
                                             "test_set_not_used_for_training_or_tuning"]), json_values),
       model=st.dictionaries(st.sampled_from(list(MODEL)), json_values | st.text(max_size=300)))
def test_fuzzed_submission_json_never_raises_or_writes_outside_the_board(valid: Path, meta: dict, model: dict) -> None:
    before = no_stray_temp_folders()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = edited(valid, root / "sub")
        document = json.loads((folder / "submission.json").read_text())
        document.update(meta)
        if isinstance(document.get("model"), dict):
            document["model"].update(model)
        (folder / "submission.json").write_text(json.dumps(document))
        sub, report = validate(folder)
        assert (sub is None) == bool(report.problems)
        if sub is not None:
            board.add(folder, root / "lb")
            board.build(root / "lb")
            assert review.check(root / "lb") == []
            written = {p.relative_to(root).parts[:2] for p in root.rglob("*") if p.is_file()}
            assert written <= {("sub", p.name) for p in folder.iterdir()} | {("lb", "entries"), ("lb", "README.md"),
                                                                               ("lb", "index.html"),
                                                                               ("lb", ".hierarcaps.lock"),
                                                                               ("lb", ".hierarcaps-owner.json")}
            assert all(len(p.relative_to(root / "lb" / "entries").parts) == 3
                       for p in (root / "lb" / "entries").rglob("*") if p.is_file())
    assert no_stray_temp_folders() <= before


@pytest.fixture(scope="module")
def archives(valid: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("archives")
    with zipfile.ZipFile(folder / "a.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for file in valid.iterdir():
            z.write(file, f"sub/{file.name}")
    with tarfile.open(folder / "a.tar.gz", "w:gz") as t:
        t.add(valid, arcname="sub")
    return {name: (folder / name).read_bytes() for name in ("a.zip", "a.tar.gz")}


@FUZZ
@given(kind=st.sampled_from(["a.zip", "a.tar.gz"]), cut=st.integers(0, 100), flips=st.lists(
    st.tuples(st.integers(0, 10**9), st.integers(1, 255)), max_size=8))
def test_fuzzed_archives_never_raise(archives: dict[str, bytes], kind: str, cut: int, flips: list) -> None:
    data = bytearray(archives[kind])
    for position, xor in flips:
        data[position % len(data)] ^= xor
    data = data[:max(1, len(data) * (100 - cut) // 100)] if cut > 90 else data
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / kind
        path.write_bytes(bytes(data))
        sub, report = validate(path)
        assert (sub is None) == bool(report.problems)
        assert all("\n" not in p for p in report.problems)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list('ab ,"\r\n=>\ufeff\x00é')), max_size=300),
       header=st.sampled_from(["id,captions,image_url", "positive,negative,image_url", "\ufeffid,captions", ""]))
def test_fuzzed_csv_gives_records_or_located_errors(text: str, header: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_text(header + "\n" + text, encoding="utf-8")
        try:
            _, found = parse_file(path)
        except DataError as exc:
            assert str(path) in str(exc)
            return
        assert all(isinstance(p, DataError) and str(path) in str(p) for p in found)
