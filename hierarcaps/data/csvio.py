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
from .records import TIERS, Hierarchy, image_file_from_url, split_tiers, validate_records
from .tables import checked_header, delimiter_of, parquet_table, read_text, text_rows

FORMATS: dict[str, tuple[str, ...]] = {
    "test": ("id", "captions", "image_url"),
    "pairs": ("positive", "negative", "image_url"),
}
REQUIRED: dict[str, tuple[str, ...]] = {"test": ("id", "captions"), "pairs": ("positive", "negative")}


MAX_PROBLEMS = 1000
"""Problems collected from one file; parsing stops there (the rest would only repeat them)."""


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
              n_tiers: int | None = TIERS) -> tuple[list[Hierarchy], list[DataError]]:
    """Records of an official CSV file and every problem found in it (rows are 1-based data rows)."""
    path = Path(path)
    file = str(path)
    rows = text_rows(read_text(path), file, delimiter_of(path))
    header = next(rows, None)
    if header is None:
        raise DataError("empty file (no header)", file=file)
    fmt = detect_format(checked_header(header, file), file)
    col = {name: index for index, name in enumerate(header)}
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


def parse_parquet(path: str | os.PathLike[str], *, split: str = "", source: str | None = None,
                  n_tiers: int | None = TIERS) -> tuple[list[Hierarchy], list[DataError]]:
    """Records of a hierarchy parquet file (``write_parquet``'s columns) and every problem found in it; ``split``
    and ``source``, when given, replace the file's own."""
    path = Path(path)
    file = str(path)
    table = parquet_table(path, PARQUET_TYPES)
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
