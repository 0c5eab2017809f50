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
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._io import atomic_open, atomic_path
from ..errors import DataError
from .fetch import cached_download, is_url
from .records import DEFAULT_TIERS, Hierarchy, image_file_from_url, split_tiers, validate_records

FORMATS: dict[str, tuple[str, ...]] = {
    "test": ("id", "captions", "image_url"),
    "pairs": ("positive", "negative", "image_url"),
}
REQUIRED: dict[str, tuple[str, ...]] = {"test": ("id", "captions"), "pairs": ("positive", "negative")}


MAX_TEXT_BYTES = 2**30
"""A hierarchy file's text, decompressed (the official training file is about 1% of it)."""
MAX_FIELD_CHARS = 2**20
"""One CSV cell; a longer one is reported with its row."""


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, with or without a byte-order mark), decompressed within ``MAX_TEXT_BYTES``."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
        try:
            raw = handle.read(MAX_TEXT_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise DataError(f"unreadable ({exc})", file=str(path)) from None
    if len(raw) > MAX_TEXT_BYTES:
        raise DataError(f"more than {MAX_TEXT_BYTES} bytes of text", file=str(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at line {line})",
                        file=str(path), row=line - 1) from None


def _csv_rows(text: str, file: str) -> list[list[str]]:
    """Rows of CSV text (CRLF or LF); a cell over ``MAX_FIELD_CHARS`` or broken quoting names its line."""
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    try:
        rows.extend(reader)
    except csv.Error as exc:
        over = "larger than field limit" in str(exc)
        raise DataError(f"a cell over {MAX_FIELD_CHARS} characters" if over else f"malformed CSV ({exc})",
                        file=file, row=max(len(rows), 0)) from None
    finally:
        csv.field_size_limit(limit)
    return rows


def detect_format(header: Sequence[str], file: str) -> str:
    for name, required in REQUIRED.items():
        if set(required) <= set(header):
            return name
    missing = min((set(req) - set(header) for req in REQUIRED.values()), key=len)
    raise DataError(f"missing column(s) {', '.join(sorted(missing))} (header: {', '.join(header)})",
                    file=file, row=0, field=sorted(missing)[0])


def parse_csv(path: str | os.PathLike[str], *, split: str = "", source: str | None = None,
              n_tiers: int | None = DEFAULT_TIERS) -> tuple[list[Hierarchy], list[DataError]]:
    """Records of an official CSV file and every problem found in it (rows are 1-based data rows)."""
    path = Path(path)
    file = str(path)
    rows = _csv_rows(_read_text(path), file)
    if not rows:
        raise DataError("empty file (no header)", file=file)
    header, body = rows[0], rows[1:]
    fmt = detect_format(header, file)
    col = {name: header.index(name) for name in header}
    source = source if source is not None else path.name
    records, problems = [], []
    for row_number, row in enumerate(body, start=1):
        if len(row) != len(header):
            problems.append(DataError(f"has {len(row)} fields, header has {len(header)}", file=file, row=row_number))
            continue
        url = row[col["image_url"]] if "image_url" in col else ""
        if fmt == "test":
            pos_cell, neg_cell, rid = row[col["captions"]], None, row[col["id"]]
        else:
            pos_cell, neg_cell, rid = row[col["positive"]], row[col["negative"]], str(row_number - 1)
        records.append(Hierarchy(
            id=rid, positive=split_tiers(pos_cell),
            negative=split_tiers(neg_cell) if neg_cell is not None else None,
            image_url=url or None, image_file=image_file_from_url(url) if url else None,
            source=source, split=split, positive_cell=pos_cell, negative_cell=neg_cell,
        ))
    problems.extend(validate_records(records, file=file, n_tiers=n_tiers))
    return records, problems


def parse_parquet(path: str | os.PathLike[str], *, n_tiers: int | None = DEFAULT_TIERS
                  ) -> tuple[list[Hierarchy], list[DataError]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    file = str(path)
    missing = {"id", "positive"} - set(table.column_names)
    if missing:
        raise DataError(f"missing column(s) {', '.join(sorted(missing))}", file=file, row=0, field=sorted(missing)[0])
    records = []
    for row in table.to_pylist():
        negative = row.get("negative")
        records.append(Hierarchy(
            id=str(row["id"]), positive=tuple(row["positive"]),
            negative=tuple(negative) if negative is not None else None,
            image_url=row.get("image_url"), image_file=row.get("image_file"),
            source=row.get("source") or Path(path).name, split=row.get("split") or "",
        ))
    return records, validate_records(records, file=file, n_tiers=n_tiers)


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
