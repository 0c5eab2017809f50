"""A model that knows nothing must never win: collapsed submissions score 0 and chance, and rank below real ones.

Before the tie-aware d_corr, a submission whose text rows were one vector scored d_corr 1.000 [1.000, 1.000]
and topped the board (the reference's stable argsort counts tied radii as the right order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hierarcaps.data import load_official
from hierarcaps.leaderboard import board, review
from hierarcaps.leaderboard.submission import write_submission
from hierarcaps.leaderboard.validate import validate

DIM = 16
MODEL = {"parameters": 5, "licence": "mit", "link": "", "training_data": "none"}


def hierarchy_aware(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small 'real' model: distinct random captions whose distance to the root grows with the tier, with
    noise (so d_corr is high but below 1), and images that sit near their row's tier-4 caption."""
    rng = np.random.default_rng(seed)
    records = load_official("test")
    root = np.zeros(DIM)
    root[0] = 1.0
    text = []
    for _ in records:
        for tier in range(4):
            direction = rng.standard_normal(DIM)
            direction[0] = 0
            direction /= np.linalg.norm(direction)
            angle = 0.25 * (tier + 1) + rng.normal(0, 0.05)
            text.append(np.cos(angle) * root + np.sin(angle) * direction)
    text = np.array(text)
    image = text[3::4] + rng.normal(0, 0.05, (len(records), DIM))
    return root, text, image / np.linalg.norm(image, axis=1, keepdims=True)


def submission(folder: Path, name: str, root: np.ndarray, text: np.ndarray, image: np.ndarray,
               text_radii: np.ndarray | None = None) -> Path:
    return write_submission(folder, load_official("test"), root, text, image,
                            {"model": {**MODEL, "name": name, "revision": "r1"},
                             "test_set_not_used_for_training_or_tuning": True}, text_radii=text_radii)


def collapsed(kind: str) -> dict[str, np.ndarray]:
    root, text, image = hierarchy_aware()
    if kind == "constant":
        text = np.tile(text[:1], (len(text), 1))
    elif kind == "repeated_in_chain":
        text = np.repeat(text[::4], 4, axis=0)          # every tier of a row is its tier-1 vector
    elif kind == "constant_radii":
        return {"root": root, "text": text, "image": image, "text_radii": np.full(len(text), 0.5)}
    return {"root": root, "text": text, "image": image}


@pytest.mark.parametrize("kind", ["constant", "repeated_in_chain", "constant_radii"])
def test_a_collapsed_submission_scores_zero_and_ranks_below_a_real_model_and_caption_length(
        tmp_path: Path, kind: str) -> None:
    lb = tmp_path / "lb"
    board.add(submission(tmp_path / "real", "hierarchy-aware", *hierarchy_aware()), lb)
    arrays = collapsed(kind)
    name = f"collapsed-{kind.replace('_', '-')}"
    sub, report = validate(submission(tmp_path / kind, name, **arrays))
    assert sub is not None
    folder, _ = board.add(tmp_path / kind, lb)
    result = json.loads((folder / "result.json").read_text())
    assert result["metrics"]["d_corr"]["value"] == 0.0
    assert result["metrics"]["d_corr"]["ci95"] == [0.0, 0.0]
    if kind == "constant":   # every caption ties for every image: chance, where ties in its favour gave 1.0
        assert result["metrics"]["i2t_R@1"]["value"] == pytest.approx(1 / 1000)
        assert any("1 distinct vector(s) for 3132 distinct captions" in note for note in report.notes)
        assert result["validation_notes"] == sub.notes
    board.build(lb)
    order = [line.split("|")[2].strip() for line in (lb / "README.md").read_text().splitlines()
             if line.startswith("| ") and "---" not in line][1:]
    assert order[0] == "hierarchy-aware", order
    assert order.index(name) > order.index("*caption length (characters) (reference)*")


def test_rows_whose_norm_overflows_float64_are_refused_not_normalised_to_zero(tmp_path: Path) -> None:
    root, text, image = hierarchy_aware()
    folder = submission(tmp_path / "sub", "overflow", root, text, image)
    with np.load(folder / "embeddings.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["text"] = text.astype(np.float64) * 1e300              # write_submission stores float32: redo
    np.savez(folder / "embeddings.npz", **arrays)
    sub, report = validate(folder)
    assert sub is None
    assert any("overflows float64" in p and p.startswith("text") for p in report.problems), report.problems


def test_the_real_model_scores_as_upstream_would_and_well(tmp_path: Path) -> None:
    """The control: the same code gives the hierarchy-aware model a high d_corr (not everything is 0)."""
    folder, _ = board.add(submission(tmp_path / "real", "hierarchy-aware", *hierarchy_aware()), tmp_path / "lb")
    assert json.loads((folder / "result.json").read_text())["metrics"]["d_corr"]["value"] > 0.8


def test_the_published_board_is_topped_by_a_real_model() -> None:
    repo = Path(__file__).resolve().parents[1] / "leaderboard"
    entries = [json.loads(p.read_text()) for p in sorted(repo.glob("entries/*/*/result.json"))]
    best = max(entries, key=lambda e: e["metrics"]["d_corr"]["value"])
    assert best["model"]["name"] == "all-MiniLM-L6-v2 + RE fine-tuning"
    assert review.check(repo) == []
