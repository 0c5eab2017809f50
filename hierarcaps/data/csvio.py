"""The official HierarCaps file formats, read and written exactly.

- ``test``: columns ``id, captions, image_url``; ``captions`` holds the positive chain.
- ``pairs`` (train and expanded): columns ``positive, negative, image_url``; ``image_url`` is optional
  (the Conceptual Captions training file is text only). Rows get their 0-based row index as id.
Tiers are joined by `` => ``. ``.gz`` files are read and written compressed. Parquet files written by
this package (one column per record field) are read too.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_open, atomic_path, read_bounded, regular_file_size
from ..errors import DataError
from .fetch import cached_download, is_url
from .records import DEFAULT_TIERS, Hierarchy, image_file_from_url, split_tiers, validate_records

FORMATS: dict[str, tuple[str, ...]] = {
    "test": ("id", "captions", "image_url"),
    "pairs": ("positive", "negative", "image_url"),
}
REQUIRED: dict[str, tuple[str, ...]] = {"test": ("id", "captions"), "pairs": ("positive", "negative")}


MAX_TEXT_BYTES = 256 * 2**20
"""A hierarchy file's text, decompressed (the official training file is a few percent of it)."""
MAX_FIELD_CHARS = 2**20
"""One CSV cell; a longer one is reported with its row."""
MAX_ROWS = 1_000_000
"""Rows of one hierarchy file (a record costs about 1 KB in memory): larger collections come as several files."""
MAX_PROBLEMS = 1000
"""Problems collected from one file; parsing stops there (the rest would only repeat them)."""


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, with or without a byte-order mark), decompressed within ``MAX_TEXT_BYTES``."""
    raw = read_bounded(path, MAX_TEXT_BYTES, what="hierarchy file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at line {line})",
                        file=str(path), row=line - 1) from None


def _csv_rows(text: str, file: str) -> Iterator[list[str]]:
    """Rows of CSV text (CRLF or LF), blank lines skipped; a cell over ``MAX_FIELD_CHARS``, broken quoting or
    more than ``MAX_ROWS`` rows names its line."""
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""))
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


def detect_format(header: Sequence[str], file: str) -> str:
    for name, required in REQUIRED.items():
        if set(required) <= set(header):
            return name
    missing = min((set(req) - set(header) for req in REQUIRED.values()), key=len)
    raise DataError(f"missing column(s) {', '.join(sorted(missing))} (header: {', '.join(header)[:200]})",
                    file=file, row=0, field=sorted(missing)[0])


class Problems(list):
    """Problems of one file, at most ``MAX_PROBLEMS``: adding one more stops the parse with a last line saying so."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def add(self, problem: DataError) -> None:
        if len(self) >= MAX_PROBLEMS:
            self.append(DataError(f"stopped after {MAX_PROBLEMS} problems", file=self.file))
            raise StopParsing
        self.append(problem)


class StopParsing(Exception):
    """Raised by ``Problems.add`` once the file has shown enough problems."""


def parse_csv(path: str | os.PathLike[str], *, split: str = "", source: str | None = None,
              n_tiers: int | None = DEFAULT_TIERS) -> tuple[list[Hierarchy], list[DataError]]:
    """Records of an official CSV file and every problem found in it (rows are 1-based data rows)."""
    path = Path(path)
    file = str(path)
    rows = _csv_rows(_read_text(path), file)
    header = next(rows, None)
    if header is None:
        raise DataError("empty file (no header)", file=file)
    fmt = detect_format(header, file)
    col = {name: header.index(name) for name in header}
    source = source if source is not None else path.name
    records: list[Hierarchy] = []
    problems = Problems(file)
    try:
        for row_number, row in enumerate(rows, start=1):
            if len(row) != len(header):
                problems.add(DataError(f"has {len(row)} fields, header has {len(header)}", file=file, row=row_number))
                continue
            records.append(_record(row, col, fmt, row_number, source, split))
        for problem in validate_records(records, file=file, n_tiers=n_tiers):
            problems.add(problem)
    except StopParsing:
        pass
    return records, list(problems)


def _record(row: list[str], col: dict[str, int], fmt: str, row_number: int, source: str, split: str) -> Hierarchy:
    url = row[col["image_url"]] if "image_url" in col else ""
    if fmt == "test":
        pos_cell, neg_cell, rid = row[col["captions"]], None, row[col["id"]]
    else:
        pos_cell, neg_cell, rid = row[col["positive"]], row[col["negative"]], str(row_number - 1)
    return Hierarchy(
        id=rid, positive=split_tiers(pos_cell),
        negative=split_tiers(neg_cell) if neg_cell is not None else None,
        image_url=url or None, image_file=image_file_from_url(url) if url else None,
        source=source, split=split, positive_cell=pos_cell, negative_cell=neg_cell,
    )


PARQUET_TYPES = {"id": "string", "positive": "list<string>", "negative": "list<string>", "image_url": "string",
                 "image_file": "string", "source": "string", "split": "string"}
"""The hierarchy parquet columns this package reads, and their types (others are ignored)."""


def _parquet_table(path: Path) -> Any:
    """The known columns of a hierarchy parquet file, bounded before anything is decoded: the file's size, its
    footer's row count and uncompressed bytes, the column types, then (strings read as dictionaries) every
    cell's length and the decoded total."""
    import pyarrow.parquet as pq

    file = str(path)
    regular_file_size(path, what="hierarchy file")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors for a file that is not parquet
        raise DataError(f"not a readable parquet file ({one_line(exc)})", file=file) from None
    meta = parquet.metadata
    if meta.num_rows > MAX_ROWS:
        raise DataError(f"{meta.num_rows} rows, more than the limit of {MAX_ROWS}; split the file", file=file)
    packed = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    if packed > MAX_TEXT_BYTES:
        raise DataError(f"{packed} bytes uncompressed, over the limit of {MAX_TEXT_BYTES}", file=file)
    schema = parquet.schema_arrow
    columns = [name for name in PARQUET_TYPES if name in schema.names]
    for name in columns:
        if not _has_type(schema.field(name).type, PARQUET_TYPES[name]):
            raise DataError(f"type {schema.field(name).type}, expected {PARQUET_TYPES[name]}", file=file, row=0,
                            field=name)
    leaves = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
    strings = [leaf for leaf in leaves if leaf.split(".")[0] in columns]
    try:
        table = pq.ParquetFile(path, read_dictionary=strings).read(columns=columns)
    except Exception as exc:
        raise DataError(f"unreadable parquet data ({one_line(exc)})", file=file) from None
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


def parse_parquet(path: str | os.PathLike[str], *, split: str = "", source: str | None = None,
                  n_tiers: int | None = DEFAULT_TIERS) -> tuple[list[Hierarchy], list[DataError]]:
    """Records of a hierarchy parquet file (``write_parquet``'s columns) and every problem found in it; ``split``
    and ``source``, when given, replace the file's own."""
    path = Path(path)
    file = str(path)
    table = _parquet_table(path)
    missing = {"id", "positive"} - set(table.column_names)
    if missing:
        raise DataError(f"missing column(s) {', '.join(sorted(missing))}", file=file, row=0, field=sorted(missing)[0])
    records = []
    problems = Problems(file)
    try:
        for number, row in enumerate(table.to_pylist(), start=1):
            if row["id"] is None or row["positive"] is None or None in row["positive"]:
                problems.add(DataError("empty (null)", file=file, row=number,
                                       field="id" if row["id"] is None else "positive"))
                continue
            negative = row.get("negative")
            records.append(Hierarchy(
                id=str(row["id"]), positive=tuple(row["positive"]),
                negative=tuple(t or "" for t in negative) if negative is not None else None,
                image_url=row.get("image_url"), image_file=row.get("image_file"),
                source=source if source is not None else (row.get("source") or path.name),
                split=split or row.get("split") or "",
            ))
        for problem in validate_records(records, file=file, n_tiers=n_tiers):
            problems.add(problem)
    except StopParsing:
        pass
    return records, list(problems)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def parse_file(path: str | os.PathLike[str], **kwargs: object) -> tuple[list[Hierarchy], list[DataError]]:
    """Parse a hierarchy file (CSV, CSV.gz, parquet, or an http(s) URL of one) into records and problems."""
    if is_url(path):
        path = cached_download(str(path), subdir="data")
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", file=str(path))
    if path.suffix == ".parquet":
        return parse_parquet(path, **kwargs)  # type: ignore[arg-type]
    return parse_csv(path, **kwargs)  # type: ignore[arg-type]


def read_hierarchies(path: str | os.PathLike[str], **kwargs: object) -> list[Hierarchy]:
    """Records of a hierarchy file; raises the first problem (with a count of the others) if any."""
    records, problems = parse_file(path, **kwargs)
    if problems:
        more = f" (+{len(problems) - 1} more; `hierarcaps validate` lists all)" if len(problems) > 1 else ""
        first = problems[0]
        raise DataError(first.reason + more, file=first.file, row=first.row, field=first.field)
    return records


def write_csv(records: Iterable[Hierarchy], path: str | os.PathLike[str], *, fmt: str = "pairs") -> Path:
    """Write records in an official format, atomically; ``.gz`` paths are gzip-compressed."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}")
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FORMATS[fmt])
    for row_number, record in enumerate(records, start=1):
        url = record.image_url or ""
        if fmt == "test":
            writer.writerow([record.id, record.cell("positive"), url])
        else:
            if record.negative is None:
                raise DataError("the pairs format needs a negative chain", file=str(path), row=row_number,
                                field="negative")
            writer.writerow([record.cell("positive"), record.cell("negative"), url])
    data = buffer.getvalue().encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return path


def write_parquet(records: Iterable[Hierarchy], path: str | os.PathLike[str],
                  metadata: dict[str, str] | None = None) -> Path:
    """Write records as parquet (one column per record field; ``parse_parquet`` reads it back), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([r.to_dict() for r in records], schema=_record_schema())
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _record_schema():
    """Explicit types, so that an all-null column (no negatives) still has its list type."""
    import pyarrow as pa

    strings = pa.list_(pa.string())
    return pa.schema([("id", pa.string()), ("positive", strings), ("negative", strings), ("image_url", pa.string()),
                      ("image_file", pa.string()), ("source", pa.string()), ("split", pa.string())])
