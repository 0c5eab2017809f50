"""One tabular reader for captions, pairs and hierarchy files: the same rows from a CSV with or without a
byte-order mark, with LF or CRLF line ends, from TSV and from parquet, in every command that reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hierarcaps.errors import DataError
from hierarcaps.generation.captions import read_captions
from hierarcaps.reco.sources import load_items

ROWS = [{"id": "a1", "image": "http://x.org/1.jpg", "caption": "a dog on a beach", "group": "g1"},
        {"id": "a2", "image": "http://x.org/2.jpg", "caption": "two cats, asleep", "group": "g1"}]


def write(folder: Path, name: str, rows: list[dict[str, str]]) -> Path:
    import csv
    import io

    path = folder / name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    buffer = io.StringIO()
    delimiter = "\t" if ".tsv" in name else ","
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter=delimiter,
                            lineterminator="\r\n" if "crlf" in name else "\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    path.write_bytes(("\ufeff" if "bom" in name else "").encode() + text.encode())
    return path


@pytest.mark.parametrize("name", ["plain.csv", "bom.csv", "bom-crlf.csv", "pairs.tsv", "pairs.parquet"])
def test_captions_and_memory_pairs_read_the_same_from_every_table(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, ROWS)
    captions = read_captions(path)
    assert [(r["id"], r["caption"]) for r in captions] == [("a1", "a dog on a beach"), ("a2", "two cats, asleep")]
    items = load_items(str(path))
    assert [(i.id, i.caption, i.image, i.group) for i in items] == [
        ("a1", "a dog on a beach", "http://x.org/1.jpg", "g1"), ("a2", "two cats, asleep", "http://x.org/2.jpg", "g1")]


def test_a_bad_table_names_its_file_row_and_field(tmp_path: Path) -> None:
    rows = [dict(ROWS[0]), {**ROWS[1], "caption": ""}]
    path = write(tmp_path, "bom.csv", rows)
    with pytest.raises(DataError, match="row 2, field 'caption'"):
        read_captions(path)
    with pytest.raises(DataError, match="row 2, field 'caption'"):
        load_items(str(path))
    short = tmp_path / "short.csv"
    short.write_text("image,caption\nhttp://x.org/1.jpg\n")
    with pytest.raises(DataError, match="row 1: has 1 fields"):
        load_items(str(short))
