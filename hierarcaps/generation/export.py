"""The export stage: the run's hierarchies as files a person and ``hierarcaps validate`` can read.

A final check (every link of each positive entailed, from the probabilities the build stage stored: no model
runs), de-duplication, the official pairs CSV and a parquet file with the run's provenance, and the statistics
(``stats.json`` and ``stats.md``): acceptance per stage and per source (the LLM's chains for the captions it
saw, the student's for the rest), so a user can compare the student with its teacher.
"""

from __future__ import annotations

import json
from typing import Any

from .._io import atomic_open, sha256_file
from ..data.csvio import write_csv, write_parquet
from ..data.records import Hierarchy
from .report import deduplicate, render_stats, source_summary, stage_summary, tier_lengths
from .transforms import Row, final_check

Runner = Any
"""A ``runner.Runner`` (named here without importing it: the runner's stages call this module)."""


def invalid_as_reason(row: Row) -> Row:
    """A built row whose hierarchy would not pass `hierarcaps validate` is rejected with the first problem as its
    reason: the export holds only valid records."""
    if row["reason"] is not None:
        return row
    record = Hierarchy(id=row["id"], positive=tuple(row["positive"]), negative=tuple(row["negative"]))
    problems = record.problems()
    return {**row, "reason": f"invalid:{problems[0][0]}"} if problems else row


def write_export(runner: Runner, sharded: tuple[str, ...]) -> None:
    """The export folder's files, with a summary of each of the ``sharded`` stages; ``stats.json`` last (its
    presence marks the export complete)."""
    config = runner.config
    folder = runner.folder("export")
    if (folder / "stats.json").exists():
        return
    built = runner.read_stage("build")
    final = deduplicate([invalid_as_reason(final_check(row, config.nli)) for row in built])
    records = [Hierarchy(id=r["id"], positive=tuple(r["positive"]), negative=tuple(r["negative"]),
                         image_url=r["image_url"] or None, source=r.get("source") or "student", split="generated")
               for r in final if r["reason"] is None]
    settings = {k: v for k, v in config.to_dict().items() if k != "out"}   # where it ran is not provenance
    provenance = {"config": settings, "config_fingerprint": config.fingerprint(), "models": runner.model_versions()}
    csv_path = write_csv(records, folder / "hierarchies.csv", fmt="pairs")
    parquet_path = write_parquet(records, folder / "hierarchies.parquet",
                                 metadata={"hierarcaps.provenance": json.dumps(provenance)})
    distill_summary = json.loads((runner.folder("distill") / "summary.json").read_text())
    captions = json.loads((runner.folder("captions") / "manifest.json").read_text())
    stats = {
        "captions": captions["captions"],
        "teacher_captions": captions.get("teacher_captions", captions["captions"]),
        "stages": {stage: stage_summary(built if stage == "build" else runner.read_stage(stage),
                                        runner.stage_seconds(stage))
                   for stage in sharded},
        "sources": source_summary(final),
        "distill": {k: v for k, v in distill_summary.items() if k != "config"},
        "export": {**stage_summary(final, 0.0), "hierarchies": len(records)},
        "tier_words": tier_lengths(records),
        "examples": [{"source": r.source, "positive": list(r.positive), "negative": list(r.negative)}
                     for r in records[:5]],
        "files": {p.name: sha256_file(p) for p in (csv_path, parquet_path)},
        **provenance,
    }
    (folder / "stats.md").write_text(render_stats(stats), encoding="utf-8")
    with atomic_open(folder / "stats.json") as handle:
        json.dump(stats, handle, indent=2)
