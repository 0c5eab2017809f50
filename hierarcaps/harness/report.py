"""Tables of results: one model next to its baselines, and many runs merged into a report.

A report keeps what the package is for: every value with its 95% CI, the protocol's main score, and the
reference baselines (random embeddings, caption length) of each split as marked rows beside the models.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._io import regular_files
from ..errors import HierarcapsError
from ..metrics.catalogue import headline, label, main_score
from ..rendering import baseline_label, markdown_table, metric_cell, text_table
from ..results import Result, plain, plain_table, read_result
from ..textsafe import markdown_cell, spreadsheet_cell

REPORT_FORMATS = ("text", "markdown", "csv", "json")


def result_table(result: Result) -> str:
    """Every metric of one run with its 95% CI, beside the random and caption-length baselines."""
    baselines = result.baselines or {}
    names = [n for n in ("random", "length_chars", "length_words") if n in baselines]
    header = ["metric", result.model.name, *(baseline_label(n, result.model.dim) for n in names)]
    rows = [[name, metric_cell(entry), *(metric_cell(baselines[n].get(name), with_ci=False) for n in names)]
            for name, entry in result.metrics.items()]
    return text_table(header, rows)


def display_name(result: Result) -> str:
    """The model's name (a path shows only its last part) and a short weights fingerprint."""
    model = result.model
    name = Path(model.name).name if model.name.startswith(("/", "~", ".")) else model.name
    fingerprint = (model.fingerprint or model.revision or "").split(":")[-1][:8]
    return f"{name} ({fingerprint})" if fingerprint else name


def read_results(paths: Sequence[str | Path]) -> list[Result]:
    """Result documents from files (each must be one: else a one-line reason) and folders (every regular JSON
    file below them that is a result; others, such as submission.json, are passed over; links to folders are
    not followed, and pipes or devices are never opened)."""
    results = []
    for entry in map(Path, paths):
        if entry.is_dir():
            for file in regular_files(entry, "*.json"):
                try:
                    results.append(read_result(file))
                except HierarcapsError:
                    continue
            continue
        results.append(read_result(entry))
    if not results:
        raise HierarcapsError("no result JSON files found")
    return results


def report_rows(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One row per run and one per baseline of each split (from the first run that carries them)."""
    rows, seen_splits = [], set()
    for result in results:
        split = result.dataset.split
        main = main_score(result.protocol.name).name
        rows.append({"model": display_name(result), "split": split, "kind": "model", "main_score": main,
                     "images": result.dataset.image_recipe or "", "metrics": result.metrics})
        if result.baselines is not None and split not in seen_splits:
            seen_splits.add(split)
            rows += [{"model": baseline_label(name, result.model.dim), "split": split, "kind": "baseline",
                      "main_score": main, "images": "", "metrics": metrics}
                     for name, metrics in result.baselines.items()]
    return rows


def report(results: Sequence[Result], output: str = "text", metrics: Sequence[str] | None = None) -> str:
    """The merged report in ``output`` format: text, markdown, csv (value and CI columns) or json."""
    metrics = headline() if metrics is None else metrics
    rows = report_rows(results)
    if output == "json":
        return json.dumps([{**r, "metrics": plain_table({m: r["metrics"][m] for m in metrics if m in r["metrics"]}),
                            "main_score_value": plain(r["metrics"].get(r["main_score"])) or None} for r in rows],
                          indent=1)
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "split", "kind", "images", "main_score", "main_score_value",
                         *(f"{m}{part}" for m in metrics for part in ("", "_ci_low", "_ci_high"))])
        for r in rows:
            values = []
            for m in metrics:
                entry = r["metrics"].get(m)
                values += ["", "", ""] if entry is None else [entry.value, *entry.ci95]
            main = r["metrics"].get(r["main_score"])
            labels = [spreadsheet_cell(str(cell)) for cell in (r["model"], r["split"], r["kind"], r["images"],
                                                              r["main_score"])]
            writer.writerow([*labels, "" if main is None else main.value, *values])
        return buffer.getvalue()
    header = ["model", "split", f"main score ({label(rows[0]['main_score'])})", *(label(m) for m in metrics)]
    escape = markdown_cell if output == "markdown" else str
    table = [[escape(r["model"]) + (" [baseline]" if r["kind"] == "baseline" else ""), escape(r["split"]),
              metric_cell(r["metrics"].get(r["main_score"])), *(metric_cell(r["metrics"].get(m)) for m in metrics)]
             for r in rows]
    if output == "markdown":
        return "\n".join(markdown_table(header, table))
    return text_table(header, table)
