"""``push`` candidate hierarchies to a Label Studio project; ``pull`` the work back as a curated split."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_open, sha256_file
from ..data.csvio import read_hierarchies, write_csv, write_parquet
from ..data.records import Hierarchy, content_checksum
from ..errors import HierarcapsError
from .curation import curate, merge_export
from .server import Server, image_reference, read_label_config, task_for

STORE = "annotations.json"


def generator_of(path: Path) -> str:
    """The model that made a generated file (its parquet provenance), else the file's name."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
        if b"hierarcaps.provenance" in metadata:
            models = json.loads(metadata[b"hierarcaps.provenance"])["models"]
            return models.get("student") or models.get("llm") or path.name
    return path.name


def push(source: str | os.PathLike[str], project: str, *, server: Server, label_config: str | None = None,
         image_dir: str | None = None, document_root: str | None = None, generator: str | None = None,
         batch_size: int = 100, limit: int | None = None, progress: bool = True, overlap: int = 1) -> dict[str, Any]:
    """Create or reuse the project and import the hierarchies not yet in it; ``overlap`` annotations per task."""
    path = Path(source)
    records: list[Hierarchy] = read_hierarchies(path)[:limit]
    config = read_label_config(label_config)
    found = server.ensure_project(project, config, overlap)
    # absolute but not resolved: Label Studio compares the storage path with its document root as given
    folder = Path(image_dir).absolute() if image_dir else None
    root = Path(document_root).absolute() if document_root else None
    if folder is not None:
        server.ensure_local_storage(found.id, folder)
    version = generator or generator_of(path)
    tasks = [task_for(r, image_reference(r, folder, root), version) for r in records]
    counts = server.import_tasks(found.id, tasks, batch_size, progress)
    return {"project": project, "project_id": found.id, "items": len(records), **counts, "generator": version,
            "overlap": overlap}


def pull(project: str, out: str | os.PathLike[str], *, server: Server, nli_model: str | None = None
         ) -> dict[str, Any]:
    """Export the project, fold it into what was pulled before, and write the curated split + statistics.
    With ``nli_model``, every edited chain's links are re-checked for entailment."""
    found = server.find_project(project)
    if found is None:
        raise HierarcapsError(f"no project {project!r} on {server.url}")
    export = server.export(found.id)
    out = Path(out)
    store_path = out / STORE
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    store = merge_export(store, export)
    records, stats = curate(store, entailment_check(nli_model) if nli_model else None)
    stats = write_outputs(records, stats, out)
    with atomic_open(store_path) as handle:
        json.dump(store, handle)
    return stats


def entailment_check(model: str) -> Any:
    """A chain checker from an NLI model: the same judgement as the generation pipeline's filter."""
    from ..nli import NLIConfig, TransformersNLI, judge_chains

    config = NLIConfig(model=model, entail_threshold=0.5)
    scorer = TransformersNLI(config)
    return lambda chains: judge_chains(chains, scorer, config)


def write_outputs(records: list[Hierarchy], stats: dict[str, Any], out: Path) -> dict[str, Any]:
    """The curated split in the official test format and as parquet, checksums, and the statistics."""
    csv_path = write_csv(records, out / "curated.csv", fmt="test")
    parquet_path = write_parquet(records, out / "curated.parquet")
    stats = {**stats, "records": len(records), "content_checksum": content_checksum(records),
             "files": {p.name: sha256_file(p) for p in (csv_path, parquet_path)}}
    with atomic_open(out / "SHA256SUMS") as handle:
        handle.writelines(f"{digest}  {name}\n" for name, digest in stats["files"].items())
    with atomic_open(out / "stats.json") as handle:
        json.dump(stats, handle, indent=2)
    return stats
