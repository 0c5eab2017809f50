"""One reader for every table a user hands over: hierarchy files, captions, image-caption pairs.

CSV (UTF-8 with or without a byte-order mark, LF or CRLF line ends), TSV (``.tsv``), either gzip-compressed
(``.gz``), and parquet. Sizes are bounded before anything is parsed; blank lines are skipped; every problem is
one line naming the file, the row (1-based data rows, 0 for the header) and the field.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._io import read_bounded, regular_file_size
from ..errors import DataError

MAX_TEXT_BYTES = 256 * 2**20
"""A table's text, decompressed (the official training file is a few percent of it)."""
MAX_FIELD_CHARS = 2**20
"""One cell; a longer one is reported with its row."""
MAX_ROWS = 1_000_000
"""Rows of one table (a hierarchy record costs about 1 KB in memory): larger collections come as several files."""
MAX_COLUMNS = 1024
"""Columns of one table (the widest format here has seven)."""


def checked_header(header: list[str], file: str) -> list[str]:
    """A table's column names: at most ``MAX_COLUMNS``, none twice (two ``captions`` columns would leave which
    one is read to chance)."""
    if len(header) > MAX_COLUMNS:
        raise DataError(f"{len(header)} columns, more than the limit of {MAX_COLUMNS}", file=file, row=0)
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError("the column appears twice in the header", file=file, row=0, field=name)
        seen.add(name)
    return header


def read_text(path: Path) -> str:
    """A text file (UTF-8, with or without a byte-order mark), decompressed within ``MAX_TEXT_BYTES``."""
    raw = read_bounded(path, MAX_TEXT_BYTES, what="table")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at line {line})",
                        file=str(path), row=line - 1) from None


def delimiter_of(path: Path) -> str:
    return "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","


def text_rows(text: str, file: str, delimiter: str = ",") -> Iterator[list[str]]:
    """Rows of CSV/TSV text, blank lines skipped; a cell over ``MAX_FIELD_CHARS``, broken quoting or more than
    ``MAX_ROWS`` rows names its line."""
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if reader.line_num > MAX_ROWS + 1 and row:
                raise DataError(f"more than {MAX_ROWS} rows; split the file", file=file, row=reader.line_num - 1)
            if row:
                yield row
    except csv.Error as exc:
        over = "larger than field limit" in str(exc)
        raise DataError(f"a cell over {MAX_FIELD_CHARS} characters" if over else f"malformed CSV ({exc})",
                        file=file, row=max(reader.line_num - 1, 0)) from None
    finally:
        csv.field_size_limit(limit)


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def header_of(path: Path) -> list[str]:
    """A table's column names, read without parsing its rows."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        regular_file_size(path, what="table")
        try:
            names = list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow's errors for a file that is not parquet
            raise DataError(f"not a readable parquet file ({' '.join(str(exc).split())[:160]})",
                            file=str(path)) from None
        return checked_header(names, str(path))
    return checked_header(next(text_rows(read_text(path), str(path), delimiter_of(path)), []), str(path))


def records(path: str | Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {column: value}) of every data row, after checking the ``required`` columns exist."""
    path = Path(path)
    file = str(path)
    if not path.exists():
        raise DataError("no such file", file=file)
    header = header_of(path)
    columns = set(header)
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)} (columns: {', '.join(header)[:200]})", file=file,
                        row=0, field=missing[0])
    if is_parquet(path):
        yield from parquet_records(path)
        return
    rows = text_rows(read_text(path), file, delimiter_of(path))
    next(rows, None)
    for number, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise DataError(f"has {len(row)} fields, the header has {len(header)}", file=file, row=number)
        yield number, dict(zip(header, row))


def parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a parquet table, read within the bounds of :func:`parquet_table`."""
    yield from enumerate(parquet_table(path).to_pylist(), start=1)


def parquet_table(path: Path, types: dict[str, str] | None = None) -> Any:
    """A parquet table (``types``: only these columns, each checked to be a ``string`` or ``list<string>``),
    bounded before anything is decoded: the file's size, its footer's row count and uncompressed bytes, the
    column types, then (strings read as dictionaries) every cell's length and the decoded total."""
    import pyarrow.parquet as pq

    file = str(path)
    regular_file_size(path, what="table")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors for a file that is not parquet
        raise DataError(f"not a readable parquet file ({' '.join(str(exc).split())[:160]})", file=file) from None
    meta = parquet.metadata
    if meta.num_rows > MAX_ROWS:
        raise DataError(f"{meta.num_rows} rows, more than the limit of {MAX_ROWS}; split the file", file=file)
    packed = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    if packed > MAX_TEXT_BYTES:
        raise DataError(f"{packed} bytes uncompressed, over the limit of {MAX_TEXT_BYTES}", file=file)
    schema = parquet.schema_arrow
    columns = [name for name in types if name in schema.names] if types is not None else list(schema.names)
    for name in columns if types is not None else []:
        if not _has_type(schema.field(name).type, types[name]):
            raise DataError(f"type {schema.field(name).type}, expected {types[name]}", file=file, row=0,
                            field=name)
    leaves = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
    strings = [leaf for leaf in leaves if leaf.split(".")[0] in columns]
    try:
        table = pq.ParquetFile(path, read_dictionary=strings).read(columns=columns)
    except Exception as exc:
        raise DataError(f"unreadable parquet data ({' '.join(str(exc).split())[:160]})", file=file) from None
    _check_decoded_size(table, file)
    return table


def _has_type(kind: Any, expected: str) -> bool:
    """Whether an Arrow type is a string (``string``) or a list of strings (``list<string>``); an all-null
    column of an optional field passes."""
    import pyarrow as pa

    def text(t: Any) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t) or \
            (pa.types.is_dictionary(t) and text(t.value_type))

    if pa.types.is_null(kind):
        return True
    if expected == "string":
        return text(kind)
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and text(kind.value_type)


def _check_decoded_size(table: Any, file: str) -> None:
    """Refuse a table whose strings, once decoded, would exceed the limits (dictionary pages let a small file
    name one long string a million times)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = 0
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        values = pc.list_flatten(column) if str(column.type).startswith("list") else column
        if pa.types.is_null(getattr(values.type, "value_type", values.type)):
            continue                                    # no strings at all
        if hasattr(values, "dictionary"):
            lengths = pc.binary_length(values.dictionary)
            longest = pc.max(lengths).as_py() or 0
            decoded = pc.sum(pc.take(lengths, values.indices)).as_py() or 0
        else:
            lengths = pc.binary_length(values)
            longest, decoded = pc.max(lengths).as_py() or 0, pc.sum(lengths).as_py() or 0
        if longest > MAX_FIELD_CHARS * 4:
            raise DataError(f"a cell of {longest} bytes, over the limit of {MAX_FIELD_CHARS} characters",
                            file=file, field=name)
        total += decoded
        if total > MAX_TEXT_BYTES:
            raise DataError(f"over {MAX_TEXT_BYTES} bytes of text once decoded", file=file, field=name)
