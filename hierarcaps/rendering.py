"""One way to show scores, for every table the package prints or writes: the terminal, markdown, CSV and the
board's pages all take their cells, baseline labels and layouts from here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .textsafe import markdown_cell

if TYPE_CHECKING:
    from .results import Metric

MISSING = "–"
BASELINE_LABELS = {"random": "random embeddings", "length_chars": "caption length (characters)",
                   "length_words": "caption length (words)"}


def baseline_label(name: str, dim: int | None = None) -> str:
    """A reference row's name; the random baseline says its dimension where it is known."""
    text = BASELINE_LABELS.get(name, name)
    return f"{text} (d={dim})" if name == "random" and dim else text


def metric_cell(entry: Metric | None, *, with_ci: bool = True) -> str:
    """``0.7183 [0.704, 0.734]``: the mean and its 95% CI (or the mean alone)."""
    if entry is None:
        return MISSING
    low, high = entry.ci95
    return f"{entry.value:.4f} [{low:.3f}, {high:.3f}]" if with_ci else f"{entry.value:.4f}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, for a terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines; the header is escaped here, cells by the caller (some hold links or emphasis)."""
    return ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]
