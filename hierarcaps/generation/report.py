"""What the export stage reports: de-duplication, per-stage summaries, tier lengths, the stats as markdown."""

from __future__ import annotations

import collections
from typing import Any

from ..data.records import Hierarchy
from .transforms import Row


def deduplicate(rows: list[Row]) -> list[Row]:
    """Mark later rows whose positive chain repeats an earlier accepted one (case-insensitive): a caption may
    keep several different chains (the student's and the LLM's), never the same one twice."""
    seen: set[Any] = set()
    out = []
    for row in rows:
        if row["reason"] is None:
            key = tuple(t.lower() for t in row["positive"])
            if key in seen:
                row = {**row, "reason": "duplicate"}
            seen.add(key)
        out.append(row)
    return out


def _reasons(rows: list[Row]) -> dict[str, int]:
    return dict(sorted(collections.Counter(r["reason"] for r in rows if r["reason"] is not None).items()))


def stage_summary(rows: list[Row], seconds: float) -> dict[str, Any]:
    accepted = sum(r.get("reason") is None for r in rows)
    return {"rows": len(rows), "accepted": accepted,
            "acceptance": accepted / len(rows) if rows else None, "rejected_by_reason": _reasons(rows),
            "seconds": round(seconds, 3), "rows_per_s": len(rows) / seconds if seconds else None}


def source_summary(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per source of the built positives (``student``, ``llm-seed``, ``llm-augment``): how many were built, how
    many the export keeps, and why the others went, so the student's quality can be set beside its teacher's."""
    by_source: dict[str, list[Row]] = collections.defaultdict(list)
    for row in rows:
        by_source[row.get("source") or "student"].append(row)
    return {source: stage_summary(found, 0.0) for source, found in sorted(by_source.items())}


def tier_lengths(records: list[Hierarchy]) -> dict[str, dict[str, float]]:
    """Mean words per tier for positive and negative chains."""
    out = {}
    for side in ("positive", "negative"):
        chains = [getattr(r, side) for r in records]
        if chains:
            out[side] = {f"t{k + 1}": sum(len(c[k].split()) for c in chains) / len(chains) for k in range(4)}
    return out


def _summary_row(name: str, s: dict[str, Any]) -> str:
    rate = f"{s['acceptance']:.1%}" if s["acceptance"] is not None else "-"
    speed = f"{s['rows_per_s']:.1f}" if s["rows_per_s"] else "-"
    reasons = ", ".join(f"{k}: {v}" for k, v in s["rejected_by_reason"].items()) or "-"
    return f"| {name} | {s['rows']} | {s['accepted']} | {rate} | {speed} | {reasons} |"


def render_stats(stats: dict[str, Any]) -> str:
    """The stats as a short markdown report."""
    teacher = stats.get("teacher_captions", stats["captions"])
    lines = [f"# Generation report\n\n{stats['captions']} input captions ({teacher} seen by the LLM, "
             f"{stats['captions'] - teacher} by the student alone) -> **{stats['export']['hierarchies']} "
             "hierarchies**\n",
             "| stage | rows | accepted | acceptance | rows/s | rejected by reason |", "|---|---|---|---|---|---|"]
    lines += [_summary_row(name, s) for name, s in [*stats["stages"].items(), ("export", stats["export"])]]
    if stats.get("sources"):
        lines += ["\nBy source of the positive chain (the LLM's for its captions, the student's for the rest):\n",
                  "| source | built | exported | acceptance | rows/s | rejected by reason |",
                  "|---|---|---|---|---|---|"]
        lines += [_summary_row(name, s) for name, s in stats["sources"].items()]
    d = stats["distill"]
    lines.append(f"\nDistillation: {d['steps']} steps on {d['train_pairs']} pairs; held-out loss "
                 f"{d['val_loss_first']} -> {d['val_loss_last']}.\n")
    lines.append("Examples:\n")
    lines.extend(f"- ({e.get('source', 'student')}) {' => '.join(e['positive'])}\n  - negative: "
                 f"{' => '.join(e['negative'])}" for e in stats["examples"])
    return "\n".join(lines) + "\n"
