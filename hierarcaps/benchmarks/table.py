"""Plain-text tables of results: one model next to its baselines, and many runs merged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

HEADLINE = ("precision", "recall", "d_corr", "order_aware_recall", "f1", "i2t_R@1", "t2i_R@1",
            "text_query/precision", "text_query/recall")


def fmt(entry: dict[str, Any] | None, with_ci: bool = True) -> str:
    if entry is None:
        return "-"
    low, high = entry["ci95"]
    return f"{entry['value']:.4f} [{low:.3f}, {high:.3f}]" if with_ci else f"{entry['value']:.4f}"


def render_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def result_table(result: dict[str, Any]) -> str:
    """Every metric of one run with its 95% CI, beside the random and caption-length baselines."""
    baselines = result["baselines"]
    header = ["metric", result["model"]["name"], "random", "length (chars)", "length (words)"]
    rows = [[name, fmt(entry), fmt(baselines["random"].get(name), False),
             fmt(baselines["length_chars"].get(name), False), fmt(baselines["length_words"].get(name), False)]
            for name, entry in result["metrics"].items()]
    return render_rows(header, rows)


def merged_table(results: Sequence[dict[str, Any]], metrics: Sequence[str] = HEADLINE, markdown: bool = False) -> str:
    """One row per run (model x split), the headline metrics as columns."""
    header = ["model", "split", *metrics]
    rows = [[r["model"]["name"], str(r["dataset"]["split"]), *(fmt(r["metrics"].get(m), False) for m in metrics)]
            for r in results]
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *("| " + " | ".join(row) + " |" for row in rows)])
    return render_rows(header, rows)
