"""The official formats, shipped files, splits, leakage and bad input."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from hierarcaps.data import Hierarchy, load_official, offline_train_split, read_hierarchies, write_csv
from hierarcaps.data.csvio import parse_file
from hierarcaps.data.records import content_checksum
from hierarcaps.data.splits import check_leakage, require_no_leakage
from hierarcaps.errors import DataError

HEADER_TEST = "id,captions,image_url\n"
URL = "http://images.cocodataset.org/val2014/COCO_val2014_000000000139.jpg"


def write(tmp_path: Path, text: str | bytes, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_shipped_files_match_the_shared_copy(shared_dir: Path) -> None:
    from hierarcaps.data.official import official_path

    for split, name in (("test", "hierarcaps_test.csv"), ("test_expanded", "hierarcaps_test_expanded.csv.gz")):
        assert official_path(split).read_bytes() == (shared_dir / name).read_bytes()


def test_counts_of_the_official_splits() -> None:
    test, expanded = load_official("test"), load_official("test_expanded")
    assert len(test) == 1000 and len({r.image_file for r in test}) == 1000
    assert len(expanded) == 23479 and len({r.image_file for r in expanded}) == 5000
    assert all(r.n_tiers == 4 and r.negative is not None for r in expanded)
    assert test[0].positive[0] == "table" and test[0].id == "0"


def test_test_csv_round_trips_byte_for_byte(tmp_path: Path) -> None:
    from hierarcaps.data.official import official_path

    out = write_csv(load_official("test"), tmp_path / "t.csv", fmt="test")
    assert out.read_bytes() == official_path("test").read_bytes()


def test_expanded_csv_round_trips_byte_for_byte(tmp_path: Path) -> None:
    from hierarcaps.data.official import official_path

    records = load_official("test_expanded")
    assert any(r.positive_cell != r.positive_cell.strip() for r in records)  # stray whitespace is kept
    original = gzip.decompress(official_path("test_expanded").read_bytes())
    assert write_csv(records, tmp_path / "e.csv").read_bytes() == original
    assert gzip.decompress(write_csv(records, tmp_path / "e.csv.gz").read_bytes()) == original


def test_edited_tiers_are_written_from_the_tiers_not_the_stale_cell(tmp_path: Path) -> None:
    import dataclasses

    record = load_official("test")[0]
    edited = dataclasses.replace(record, positive=("furniture", *record.positive[1:]))
    text = write_csv([edited], tmp_path / "t.csv", fmt="test").read_text()
    assert "furniture => table with plates" in text


def test_offline_train_split_excludes_test_images_and_repeated_captions() -> None:
    test = load_official("test")
    expanded = load_official("test_expanded")
    test_images = {r.image_file for r in test}
    assert sum(r.image_file not in test_images for r in expanded) == 18770
    train = offline_train_split()
    assert len(train) == 18694
    assert len({r.image_file for r in train}) == 4000
    test_specific = {t.casefold() for r in test for t in r.positive[2:]}
    assert not any(t.casefold() in test_specific for r in train for t in r.positive[2:])
    # generic tiers recur and are kept
    assert {r.positive[0] for r in train} & {r.positive[0] for r in test}


def test_leakage_check_drops_repeated_captions_case_insensitively() -> None:
    test = load_official("test")[:2]
    row = Hierarchy("7", ("animal", "dog", "x", test[1].positive[3].upper()), ("a", "b", "c", "d"))
    clean = Hierarchy("8", ("animal", "dog", "x", "y"), ("a", "b", "c", "d"))
    kept, report = check_leakage([row, clean], test)
    assert [r.id for r in kept] == ["8"] and report.overlapping_rows == ["7"]


def test_leakage_check_refuses_shared_images() -> None:
    test = load_official("test")
    shared = Hierarchy("0", ("a", "b", "c", "d"), ("a", "e", "f", "g"), test[5].image_url, test[5].image_file)
    with pytest.raises(DataError, match="shares 1 image"):
        require_no_leakage([shared], test, file="train.csv")


def test_content_checksum_is_stable_and_content_sensitive() -> None:
    test = load_official("test")
    assert content_checksum(test) == content_checksum(list(test))
    assert content_checksum(test) != content_checksum(test[:-1])


@pytest.mark.parametrize(("body", "row", "field", "message"), [
    ('0,"a => b => c",u\n', 1, "positive", "has 3 tiers"),
    ('0,"a => b => c => d",u\n1,"a => b => c => d => e",u\n', 2, "positive", "has 5 tiers"),
    ('0,"a => => c => d",u\n', 1, "positive", "tier 2 is empty"),
    ('0,"a => b => c => d",u\n0,"a => b => c => e",u\n', 2, "id", "duplicated id '0'"),
])
def test_bad_rows_name_file_row_and_field(tmp_path: Path, body: str, row: int, field: str, message: str) -> None:
    path = write(tmp_path, HEADER_TEST + body)
    with pytest.raises(DataError, match=message) as info:
        read_hierarchies(path)
    assert (info.value.file, info.value.row, info.value.field) == (str(path), row, field)
    assert str(path) in str(info.value) and f"row {row}" in str(info.value)


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "positive,image_url\na => b => c => d,u\n")
    with pytest.raises(DataError, match="missing column") as info:
        read_hierarchies(path)
    assert info.value.field == "negative"


def test_non_utf8_bytes_are_located(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER_TEST.encode() + b'0,"a => b => c => d",u\n1,"caf\xe9 => b => c => d",u\n')
    with pytest.raises(DataError, match=r"not valid UTF-8.*line 3") as info:
        read_hierarchies(path)
    assert info.value.row == 2


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER_TEST + '0,"a => b => c",u\n0,"a => => c => d",u\n')
    records, problems = parse_file(path)
    assert len(records) == 2
    assert [(p.row, p.field) for p in problems] == [(1, "positive"), (2, "positive"), (2, "id")]
    result = subprocess.run([sys.executable, "-m", "hierarcaps", "validate", str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert len(result.stdout.strip().splitlines()) == 3
    good = write(tmp_path, HEADER_TEST + '0,"a => b => c => d",u\n', "ok.csv")
    ok = subprocess.run([sys.executable, "-m", "hierarcaps", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_parquet_hierarchy_files_are_read(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = load_official("test")[:5]
    pq.write_table(pa.Table.from_pylist([r.to_dict() for r in records]), tmp_path / "h.parquet")
    assert read_hierarchies(tmp_path / "h.parquet") == [
        Hierarchy(r.id, r.positive, r.negative, r.image_url, r.image_file, r.source, r.split) for r in records]


def test_unwritable_output_gives_a_clear_error_and_no_partial_file(tmp_path: Path) -> None:
    from hierarcaps.errors import HierarcapsError

    blocker = write(tmp_path, "not a folder", "blocker")
    with pytest.raises(HierarcapsError, match="cannot write"):
        write_csv(load_official("test"), blocker / "out.csv", fmt="test")
    records = [Hierarchy("0", ("a", "b", "c", "d"))]
    with pytest.raises(DataError, match="needs a negative chain"):
        write_csv(records, tmp_path / "pairs.csv", fmt="pairs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_import_is_light() -> None:
    heavy = "('torch', 'datasets', 'transformers', 'open_clip')"
    code = f"import sys, hierarcaps, hierarcaps.cli; print(any(m in sys.modules for m in {heavy}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_usage_errors_exit_2_and_reported_errors_exit_1(tmp_path: Path) -> None:
    usage = subprocess.run([sys.executable, "-m", "hierarcaps", "nonsense"], capture_output=True, text=True)
    assert usage.returncode == 2
    missing = subprocess.run([sys.executable, "-m", "hierarcaps", "leakage", str(tmp_path / "none.csv")],
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr
