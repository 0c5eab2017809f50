"""RE geometry and losses on hand-built vectors, and the trainer on a tiny random CLIP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hierarcaps.data import load_official, offline_train_split, write_csv
from hierarcaps.errors import DataError, HierarcapsError
from hierarcaps.finetune.losses import LossWeights, cone_loss, pullback, re_loss
from hierarcaps.finetune.trainer import FinetuneConfig, Trainer
from hierarcaps.geometry import cone_half_aperture, exterior_angle, radius
from hierarcaps.models import load_encoder
from hierarcaps.models.random_models import save_random_hf_clip

PI = math.pi


def t(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_exterior_angle_radius_and_cone_on_known_vectors() -> None:
    root = torch.zeros(2, dtype=torch.float64)
    e = t((1, 0))[0]
    children = t((2, 0), (1, 1), (0, 0), (1, -1))
    assert exterior_angle(e, children, root).tolist() == pytest.approx([0, PI / 2, PI, PI / 2])
    shifted = torch.tensor([0.5, 0.5], dtype=torch.float64)   # the same picture moved: only e - r matters
    assert exterior_angle(e + shifted, children + shifted, shifted).tolist() == pytest.approx([0, PI / 2, PI, PI / 2])
    assert radius(t((3, 4)), root).tolist() == [5.0]
    assert cone_half_aperture(t((0.2, 0), (0.05, 0)), root, k=0.1).tolist() == pytest.approx([PI / 6, PI / 2])


def chain_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One positive chain along a ray from the root, and negatives at known exterior angles (pi/2, pi/2, pi)."""
    pos = t((1, 0), (2, 0), (3, 0), (4, 0))[None]
    neg = t((9, 9), (1, 1), (2, -1), (2, 0))[None]
    return pos, neg, torch.zeros(2, dtype=torch.float64)


def test_re_loss_terms_on_a_hand_built_chain() -> None:
    pos, neg, root = chain_example()
    terms = re_loss(pos, neg, root, pos, neg, LossWeights(pullback=0.0))
    # P = [0, 0, 0]; N = -[pi/2, pi/2, pi]; RE = mean(P) + mean(N); hard = (P+N)[argmax P] + (P+N)[argmax N]
    assert float(terms["re"]) == pytest.approx(-2 * PI / 3, abs=1e-3)
    assert float(terms["hard"]) == pytest.approx(-PI, abs=1e-3)
    assert float(terms["loss"]) == pytest.approx(-2 * PI / 3 - PI, abs=2e-3)


def test_cone_loss_terms_on_a_hand_built_chain() -> None:
    pos, neg, root = chain_example()
    terms = cone_loss(pos, neg, root, pos, neg, LossWeights(pullback=0.0, hard=0.0))
    # children inside their parent's cone cost 0; negatives at pi/2 and pi lie outside m + psi: cost 0 too
    assert float(terms["cone"]) == pytest.approx(0.0, abs=1e-9)
    bad = t((9, 9), (2, 0), (3, 0), (4, 0))[None]              # negatives placed exactly where the children are
    psi = cone_half_aperture(pos[0, :-1], root, 0.1)           # asin(0.1 / [1, 2, 3])
    terms = cone_loss(pos, bad, root, pos, bad, LossWeights(pullback=0.0, hard=0.0))
    assert float(terms["cone"]) == pytest.approx(float((0.1 + psi).mean()), abs=1e-3)


def test_pullback_is_zero_for_the_same_embeddings_and_half_for_orthogonal_ones() -> None:
    e = t((1, 0), (0, 1))
    assert float(pullback(e, e)) == 0
    assert float(pullback(e, t((0, 1), (1, 0)))) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_hf_clip(tmp_path_factory.mktemp("ft") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(offline_train_split()[:400], tmp_path_factory.mktemp("data") / "train.csv")


def config(model: str | Path, train: Path, out: Path, **kwargs: object) -> FinetuneConfig:
    defaults = dict(model=str(model), train=str(train), out=str(out), lr=3e-3, batch_size=8, max_steps=40,
                    val_every=20, checkpoint_every=10, val_fraction=0.1, progress=False, device="cpu")
    return FinetuneConfig(**{**defaults, **kwargs})  # type: ignore[arg-type]


def test_re_loss_falls_and_the_image_tower_stays_bit_identical(tiny_clip: Path, train_file: Path,
                                                               tmp_path: Path) -> None:
    trainer = Trainer(config(tiny_clip, train_file, tmp_path / "run", pullback_weight=1.0))
    state = trainer.encoder.model.state_dict()
    vision_before = {k: v.clone() for k, v in state.items() if "vision" in k or "visual" in k}
    text_before = trainer.encoder.model.text_projection.weight.detach().clone()
    final = trainer.train()
    steps = [e for e in trainer.log if "re" in e]
    first, last = (sum(e["re"] for e in part) / len(part) for part in (steps[:8], steps[-8:]))
    assert last < first - 0.05, (first, last)
    val = [e["val_loss"] for e in trainer.log if "val_loss" in e]
    assert val[-1] < val[0]
    after = trainer.encoder.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in vision_before.items())
    assert not torch.equal(trainer.encoder.model.text_projection.weight, text_before)
    # the run folder is self-describing and scores like any model
    info = json.loads((final / "hierarcaps_model.json").read_text())
    assert info["base_model"]["spec"] == str(tiny_clip) and info["data"]["train_rows"] > 0
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 0
    reloaded = load_encoder(str(final), device="cpu")
    assert reloaded.name == info["name"]
    assert torch.equal(reloaded.model.text_projection.weight, trainer.encoder.model.text_projection.weight)


def _finetune_cmd(model: Path, train: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hierarcaps", "finetune", "--model", str(model), "--train", str(train),
            "--out", str(out), "--lr", "3e-3", "--steps", "12", "--checkpoint-every", "2", "--val-every", "6",
            "--device", "cpu", "--quiet"]


def test_killed_run_resumes_to_the_same_weights(tiny_clip: Path, train_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    straight = subprocess.run(_finetune_cmd(tiny_clip, train_file, tmp_path / "straight"), capture_output=True,
                              text=True)
    assert straight.returncode == 0, straight.stderr
    process = subprocess.Popen(_finetune_cmd(tiny_clip, train_file, tmp_path / "killed"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not any(p.name >= "step-0000006" for p in checkpoints.glob("step-*")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "model").exists()
    resumed = subprocess.run(_finetune_cmd(tiny_clip, train_file, tmp_path / "killed"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = json.loads((tmp_path / "straight" / "log.json").read_text())["log"]
    log_b = json.loads((tmp_path / "killed" / "log.json").read_text())["log"]
    assert [e["step"] for e in log_b] == [e["step"] for e in log_a]          # nothing lost or duplicated
    assert [e.get("loss") for e in log_b] == [e.get("loss") for e in log_a]


def test_resuming_into_a_different_run_is_refused(tiny_clip: Path, train_file: Path, tmp_path: Path) -> None:
    Trainer(config(tiny_clip, train_file, tmp_path / "run", max_steps=10)).train()
    with pytest.raises(HierarcapsError, match="different run"):
        Trainer(config(tiny_clip, train_file, tmp_path / "run", max_steps=10, lr=1e-2)).train()


def test_training_files_sharing_test_images_are_refused(tiny_clip: Path, tmp_path: Path) -> None:
    test_images = {r.image_file for r in load_official("test")}
    leaky = [r for r in load_official("test_expanded") if r.image_file in test_images][:50]
    path = write_csv(leaky, tmp_path / "leaky.csv")
    with pytest.raises(DataError, match="shares"):
        Trainer(config(tiny_clip, path, tmp_path / "run"))


def test_open_clip_text_tower_fine_tunes_and_reloads_from_its_folder(train_file: Path, tmp_path: Path) -> None:
    from hierarcaps.models.random_models import write_open_clip_config

    spec = "open_clip:" + str(write_open_clip_config(tmp_path / "tiny-oc.json"))
    trainer = Trainer(config(spec, train_file, tmp_path / "run", max_steps=6, checkpoint_every=100))
    visual = {k: v.clone() for k, v in trainer.encoder.model.visual.state_dict().items()}
    final = trainer.train()
    assert all(torch.equal(trainer.encoder.model.visual.state_dict()[k], v) for k, v in visual.items())
    reloaded = load_encoder(str(final), device="cpu")
    texts = ["animal", "a dog on a couch"]
    assert torch.allclose(torch.from_numpy(reloaded.encode_text(texts)),
                          torch.from_numpy(trainer.encoder.encode_text(texts)), atol=1e-6)
