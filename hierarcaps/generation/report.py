"""The export stage: final NLI pass, de-duplication, the official CSV and parquet, and the stats report."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_open, sha256_file
from ..data.csvio import write_csv, write_parquet
from ..data.records import Hierarchy
from .stages import Row, final_check_batch

if TYPE_CHECKING:
    from .runner import Runner


def deduplicate(rows: list[Row]) -> list[Row]:
    """Mark later rows whose caption or positive chain repeats an earlier accepted one (case-insensitive)."""
    seen: set[Any] = set()
    out = []
    for row in rows:
        if row["reason"] is None:
            keys = {("caption", row["caption"].lower()), ("chain", tuple(t.lower() for t in row["positive"]))}
            if keys & seen:
                row = {**row, "reason": "duplicate"}
            seen |= keys
        out.append(row)
    return out


def _reasons(rows: list[Row]) -> dict[str, int]:
    return dict(sorted(collections.Counter(r["reason"] for r in rows if r["reason"] is not None).items()))


def _stage_summary(rows: list[Row], seconds: float) -> dict[str, Any]:
    accepted = sum(r.get("reason") is None for r in rows)
    return {"rows": len(rows), "accepted": accepted,
            "acceptance": accepted / len(rows) if rows else None, "rejected_by_reason": _reasons(rows),
            "seconds": round(seconds, 3), "rows_per_s": len(rows) / seconds if seconds else None}


def tier_lengths(records: list[Hierarchy]) -> dict[str, dict[str, float]]:
    """Mean words per tier for positive and negative chains."""
    out = {}
    for side in ("positive", "negative"):
        chains = [getattr(r, side) for r in records]
        if chains:
            out[side] = {f"t{k + 1}": sum(len(c[k].split()) for c in chains) / len(chains) for k in range(4)}
    return out


def export_run(runner: Runner) -> Path:
    from .runner import FOLDERS, stage_seconds

    folder = runner.out / FOLDERS["export"]
    if (folder / "stats.json").exists():
        return folder
    built = runner.read_stage("build")
    final = deduplicate(final_check_batch(built, runner.models))
    records = [Hierarchy(id=r["id"], positive=tuple(r["positive"]), negative=tuple(r["negative"]),
                         image_url=r["image_url"] or None, source="generated", split="generated")
               for r in final if r["reason"] is None]
    settings = {k: v for k, v in runner.config.to_dict().items() if k != "out"}   # where it ran is not provenance
    provenance = {"config": settings, "config_fingerprint": runner.config.fingerprint(),
                  "models": runner.model_versions()}
    csv_path = write_csv(records, folder / "hierarchies.csv", fmt="pairs")
    parquet_path = write_parquet(records, folder / "hierarchies.parquet",
                                 metadata={"hierarcaps.provenance": json.dumps(provenance)})
    distill_summary = json.loads((runner.out / FOLDERS["distill"] / "summary.json").read_text())
    stats = {
        "captions": json.loads((runner.out / FOLDERS["captions"] / "manifest.json").read_text())["captions"],
        "stages": {stage: _stage_summary(built if stage == "build" else runner.read_stage(stage),
                                         stage_seconds(runner, stage))
                   for stage in ("seed", "filter", "augment", "build")},
        "distill": {k: v for k, v in distill_summary.items() if k != "config"},
        "export": {**_stage_summary(final, 0.0), "hierarchies": len(records)},
        "tier_words": tier_lengths(records),
        "examples": [{"positive": list(r.positive), "negative": list(r.negative)} for r in records[:5]],
        "files": {p.name: sha256_file(p) for p in (csv_path, parquet_path)},
        **provenance,
    }
    (folder / "stats.md").write_text(render_stats(stats), encoding="utf-8")
    with atomic_open(folder / "stats.json") as handle:   # last: its presence marks the export complete
        json.dump(stats, handle, indent=2)
    return folder


def render_stats(stats: dict[str, Any]) -> str:
    """The stats as a short markdown report."""
    lines = [f"# Generation report\n\n{stats['captions']} input captions -> "
             f"**{stats['export']['hierarchies']} hierarchies**\n",
             "| stage | rows | accepted | acceptance | rows/s | rejected by reason |", "|---|---|---|---|---|---|"]
    for name, s in [*stats["stages"].items(), ("export", stats["export"])]:
        rate = f"{s['acceptance']:.1%}" if s["acceptance"] is not None else "-"
        speed = f"{s['rows_per_s']:.1f}" if s["rows_per_s"] else "-"
        reasons = ", ".join(f"{k}: {v}" for k, v in s["rejected_by_reason"].items()) or "-"
        lines.append(f"| {name} | {s['rows']} | {s['accepted']} | {rate} | {speed} | {reasons} |")
    d = stats["distill"]
    lines.append(f"\nDistillation: {d['steps']} steps on {d['train_pairs']} pairs; held-out loss "
                 f"{d['val_loss_first']} -> {d['val_loss_last']}.\n")
    lines.append("Examples:\n")
    lines.extend(f"- {' => '.join(e['positive'])}\n  - negative: {' => '.join(e['negative'])}"
                 for e in stats["examples"])
    return "\n".join(lines) + "\n"
