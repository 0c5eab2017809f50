"""The board: scored entries on disk, and the pages rendered from them.

Layout: ``<board>/entries/<model>/<revision>/result.json`` (one scored entry) beside the submitted
``submission.json``. ``build`` renders ``README.md`` and ``index.html``; both are byte-stable for the same
entries, so a submissions pull request shows exactly what changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_open
from ..benchmarks.harness import slug
from ..data.official import load_official
from ..data.records import content_checksum
from ..errors import HierarcapsError
from ..metrics.baselines import all_baselines
from ..metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL
from ..metrics.hierarchy import DEFAULT_STEPS, PROTOCOL
from ..metrics.scoring import EmbeddedBenchmark, score
from .validate import Submission, validate

RESULT_FILE = "result.json"
ENTRY_KEYS = ("model", "protocol", "dataset", "metrics", "embeddings_sha256", "package")


def score_submission(sub: Submission) -> dict[str, Any]:
    """The entry's result document: the harness's metric functions applied to the submitted embeddings."""
    records = load_official("test")
    texts = np.array([r.positive for r in records], dtype=object)
    n, k = texts.shape
    text_emb = sub.text.reshape(n, k, -1)
    row_image = None
    if sub.image is not None:
        index = {name: i for i, name in enumerate(dict.fromkeys(r.image_file for r in records))}
        row_image = np.array([index[r.image_file] for r in records])
    radii = sub.text_radii.reshape(n, k) if sub.text_radii is not None else None
    bench = EmbeddedBenchmark(texts, text_emb, sub.root, sub.image, row_image, text_radii=radii)
    model = dict(sub.meta["model"])
    model["modalities"] = sub.meta.get("modalities", ["text", "image"])
    model["dim"] = int(sub.root.shape[0])
    return {
        "model": model,
        "protocol": {"name": PROTOCOL, "steps": DEFAULT_STEPS, "root_text": "",
                     "bootstrap": {"resamples": DEFAULT_RESAMPLES, "seed": DEFAULT_SEED, "level": LEVEL}},
        "dataset": {"split": "test", "rows": n, "checksum": content_checksum(records)},
        "metrics": score(bench),
        "text_radii_declared": sub.text_radii is not None,
        "embeddings_sha256": sub.embeddings_sha256,
        "package": {"name": "hierarcaps", "version": __version__},
    }


def entry_folder(board: Path, meta: dict[str, Any]) -> Path:
    return board / "entries" / slug(meta["model"]["name"]) / slug(meta["model"]["revision"])


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def add(path: str | Path, board: str | Path = "leaderboard", *, replace: bool = False) -> tuple[Path, str]:
    """Validate, score and store a submission. Returns (entry folder, 'added' | 'unchanged' | 'replaced')."""
    sub, report = validate(path)
    if sub is None:
        raise HierarcapsError(f"{path}: invalid submission ({len(report.problems)} problem(s)): "
                              + "; ".join(report.problems[:5]))
    folder = entry_folder(Path(board), sub.meta)
    result = dumps(score_submission(sub))
    existing = folder / RESULT_FILE
    status = "added"
    if existing.exists():
        if existing.read_text() == result:
            return folder, "unchanged"
        if not replace:
            raise HierarcapsError(f"{folder} already holds another result for this model and revision; "
                                  "bump the revision or pass --replace")
        status = "replaced"
    with atomic_open(folder / RESULT_FILE) as handle:
        handle.write(result)
    with atomic_open(folder / "submission.json") as handle:
        handle.write(dumps(sub.meta))
    return folder, status


def load_entries(board: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(p.parent, json.loads(p.read_text())) for p in sorted((board / "entries").glob(f"*/*/{RESULT_FILE}"))]


def reference_rows() -> dict[str, dict[str, Any]]:
    """Baselines computed from the test set by the same code (random embeddings at d=512, caption length)."""
    records = load_official("test")
    texts = np.array([r.positive for r in records], dtype=object)
    row_image = np.arange(len(records))
    return all_baselines(texts, row_image, len(records))


def rendered(board: Path) -> dict[str, str]:
    """The board's pages for its current entries (README.md, index.html)."""
    from .render import markdown, page, rows

    table = rows([result for _, result in load_entries(board)], reference_rows())
    return {"README.md": markdown(table), "index.html": page(table)}


def build(board: str | Path = "leaderboard") -> list[Path]:
    board = Path(board)
    written = []
    for name, text in rendered(board).items():
        with atomic_open(board / name) as handle:
            handle.write(text)
        written.append(board / name)
    return written


def check(board: str | Path = "leaderboard") -> list[str]:
    """Problems with a board folder, one line each: malformed or misplaced entries, duplicates, stale pages."""
    board = Path(board)
    problems: list[str] = []
    seen_names: dict[tuple[str, str], Path] = {}
    seen_embeddings: dict[str, Path] = {}
    for folder in sorted(p for p in (board / "entries").glob("*/*") if p.is_dir()):
        result_path = folder / RESULT_FILE
        try:
            result = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{result_path}: unreadable ({exc})")
            continue
        missing = [k for k in ENTRY_KEYS if k not in result]
        if missing:
            problems.append(f"{result_path}: missing {', '.join(missing)}")
            continue
        if result["protocol"].get("name") != PROTOCOL:
            problems.append(f"{result_path}: protocol {result['protocol'].get('name')!r}, expected {PROTOCOL!r}")
        if folder != entry_folder(board, result):
            problems.append(f"{folder}: should be {entry_folder(board, result)} for its model and revision")
        key = (result["model"]["name"], result["model"]["revision"])
        if key in seen_names:
            problems.append(f"{folder}: duplicates {seen_names[key]} (same model and revision)")
        seen_names[key] = folder
        digest = result["embeddings_sha256"]
        if digest in seen_embeddings:
            problems.append(f"{folder}: the same embeddings as {seen_embeddings[digest]}")
        seen_embeddings[digest] = folder
    if problems:
        return problems
    for name, text in rendered(board).items():
        page = board / name
        if not page.exists() or page.read_text() != text:
            problems.append(f"{page}: out of date with the entries (run `hierarcaps leaderboard build`)")
    return problems
