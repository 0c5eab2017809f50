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
from ..results import read_result
from ..textsafe import markdown_cell, spreadsheet_cell

REPORT_FORMATS = ("text", "markdown", "csv", "json")


def result_table(result: dict[str, Any]) -> str:
    """Every metric of one run with its 95% CI, beside the random and caption-length baselines."""
    baselines = result["baselines"]
    names = ("random", "length_chars", "length_words")
    header = ["metric", result["model"]["name"], *(baseline_label(n, result["model"].get("dim")) for n in names)]
    rows = [[name, metric_cell(entry), *(metric_cell(baselines[n].get(name), with_ci=False) for n in names)]
            for name, entry in result["metrics"].items()]
    return text_table(header, rows)


def display_name(result: dict[str, Any]) -> str:
    """The model's name (a path shows only its last part) and a short weights fingerprint."""
    model = result["model"]
    name = Path(str(model.get("name", "?"))).name if str(model.get("name", "")).startswith(("/", "~", ".")) \
        else str(model.get("name", "?"))
    fingerprint = str(model.get("fingerprint") or model.get("revision") or "").split(":")[-1][:8]
    return f"{name} ({fingerprint})" if fingerprint else name


def read_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Result documents from files (each must be one: else a one-line reason) and folders (every regular JSON
    file below them that is a result; others, such as submission.json, are passed over; links to folders are
    not followed, and pipes or devices are never opened)."""
    results = []
    for entry in map(Path, paths):
        if entry.is_dir():
            for file in regular_files(entry, "*.json"):
                try:
                    results.append(read_result(file).to_dict())
                except HierarcapsError:
                    continue
            continue
        results.append(read_result(entry).to_dict())
    if not results:
        raise HierarcapsError("no result JSON files found")
    return results


def report_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and one per baseline of each split (from the first run that carries them)."""
    rows, seen_splits = [], set()
    for result in results:
        split = str(result.get("dataset", {}).get("split", "?"))
        protocol = str(result["protocol"].get("name", ""))
        main = main_score(protocol).name
        rows.append({"model": display_name(result), "split": split, "kind": "model", "main_score": main,
                     "images": result.get("dataset", {}).get("image_recipe", ""), "metrics": result["metrics"]})
        baselines = result.get("baselines")
        if isinstance(baselines, dict) and split not in seen_splits:
            seen_splits.add(split)
            dim = result["model"].get("dim")
            rows += [{"model": baseline_label(name, dim), "split": split, "kind": "baseline",
                      "main_score": main, "images": "", "metrics": metrics} for name, metrics in baselines.items()]
    return rows


def report(results: Sequence[dict[str, Any]], output: str = "text", metrics: Sequence[str] | None = None) -> str:
    """The merged report in ``output`` format: text, markdown, csv (value and CI columns) or json."""
    metrics = headline() if metrics is None else metrics
    rows = report_rows(results)
    if output == "json":
        return json.dumps([{**r, "metrics": {m: r["metrics"][m] for m in metrics if m in r["metrics"]},
                            "main_score_value": r["metrics"].get(r["main_score"])} for r in rows], indent=1)
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", "split", "kind", "images", "main_score", "main_score_value",
                         *(f"{m}{part}" for m in metrics for part in ("", "_ci_low", "_ci_high"))])
        for r in rows:
            values = []
            for m in metrics:
                entry = r["metrics"].get(m)
                values += ["", "", ""] if entry is None else [entry["value"], *entry["ci95"]]
            main = r["metrics"].get(r["main_score"])
            labels = [spreadsheet_cell(str(cell)) for cell in (r["model"], r["split"], r["kind"], r["images"],
                                                              r["main_score"])]
            writer.writerow([*labels, "" if main is None else main["value"], *values])
        return buffer.getvalue()
    header = ["model", "split", f"main score ({label(rows[0]['main_score'])})", *(label(m) for m in metrics)]
    escape = markdown_cell if output == "markdown" else str
    table = [[escape(r["model"]) + (" [baseline]" if r["kind"] == "baseline" else ""), escape(r["split"]),
              metric_cell(r["metrics"].get(r["main_score"])), *(metric_cell(r["metrics"].get(m)) for m in metrics)]
             for r in rows]
    if output == "markdown":
        return "\n".join(markdown_table(header, table))
    return text_table(header, table)
