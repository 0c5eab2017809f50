"""The run's input: captions read from any table, and which of them the LLM stages see.

The paper's method, and what makes a large training set affordable: an LLM writes hierarchies for a subset of
the captions (the teacher's share), a Flan-T5 student is distilled from the LLM's accepted chains, and the
student writes the hierarchies of every other caption. Which captions the teacher sees is a seeded choice
made once, when the captions are sharded, and recorded with each caption (``teacher``), so every stage, engine
and resumed run agrees on it.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from ..errors import DataError
from .config import GenerationConfig
from .transforms import Row


def read_captions(path: str | Path) -> list[Row]:
    """Captions from a text file (one per line), a table with a ``caption`` column (CSV, TSV or parquet; ``id``
    and ``image_url`` optional), or a hierarchy file (its tier-4 captions)."""
    from ..data.tables import header_of, read_text, records

    path = Path(path)
    if not path.exists():
        raise DataError("no such input file", file=str(path))
    if path.name.lower().removesuffix(".gz").endswith(".txt"):
        return [{"id": f"line-{n}", "caption": line.strip(), "image_url": None}
                for n, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]
    if "caption" not in header_of(path):
        from ..data.csvio import read_hierarchies

        return [{"id": r.id, "caption": r.positive[-1], "image_url": r.image_url}
                for r in read_hierarchies(path, n_tiers=None)]
    rows = []
    for number, row in records(path, ("caption",)):
        caption = str(row.get("caption") or "").strip()
        if not caption:
            raise DataError("empty caption", file=str(path), row=number, field="caption")
        rows.append({"id": str(row.get("id") or f"row-{number}"), "caption": caption,
                     "image_url": row.get("image_url") or None})
    return rows


def teacher_count(config: GenerationConfig, captions: int) -> int:
    """How many captions the LLM stages see: ``teacher_captions`` when set, else ``teacher_share`` of them
    (rounded up), at most all."""
    wanted = config.teacher_captions if config.teacher_captions is not None else \
        math.ceil(config.teacher_share * captions)
    return min(captions, wanted)


def mark_teacher(rows: list[Row], config: GenerationConfig) -> list[Row]:
    """The rows with ``teacher`` set for a seeded choice of ``teacher_count`` of them: the captions whose
    hash with the run's seed is smallest, so the choice is spread over the input and does not move when the
    input is only extended."""
    def rank(row: Row) -> str:
        return hashlib.sha256(f"{config.seed}\0{row['id']}".encode()).hexdigest()

    chosen = {row["id"] for row in sorted(rows, key=rank)[:teacher_count(config, len(rows))]}
    return [{**row, "teacher": row["id"] in chosen} for row in rows]
