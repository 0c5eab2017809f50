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
from hierarcaps.finetune.geometry import cone_half_aperture, exterior_angle, radius
from hierarcaps.finetune.losses import LossWeights, cone_loss, pullback, re_loss
from hierarcaps.finetune.trainer import FinetuneConfig, Trainer
from hierarcaps.models import load_encoder

from .reference_re_loss import reference_batch_loss, tier_major_texts

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
    """One positive chain along a ray from the root; negative tiers 1-3 (siblings of positive tiers 1-3) at
    known exterior angles from their positive (pi/2, pi/2, pi); negative tier 4 is never used."""
    pos = t((1, 0), (2, 0), (3, 0), (4, 0))[None]
    neg = t((1, 1), (2, -1), (2, 0), (9, 9))[None]
    return pos, neg, torch.zeros(2, dtype=torch.float64)


def test_negative_pairing_meets_each_positive_tier_with_its_sibling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label tier k of the positive chain by one-hot index k and negative tier k by index 4 + k, and have the
    angle report which two labels met: sibling pairs (p_k, n_k), the child ablation (p_k, n_k+1)."""
    from hierarcaps.finetune import losses

    def labels_that_meet(e: torch.Tensor, e_child: torch.Tensor, root: torch.Tensor, clip: float = 0) -> torch.Tensor:
        return (10 * e.argmax(-1) + e_child.argmax(-1)).double()

    monkeypatch.setattr(losses, "exterior_angle", labels_that_meet)
    eye = torch.eye(8, dtype=torch.float64)
    pos, neg = eye[:4][None].repeat(2, 1, 1), eye[4:][None].repeat(2, 1, 1)   # batch of 2
    positive, negative = losses.chain_angles(pos, neg, torch.zeros(8))
    assert positive.tolist() == [[1, 1], [12, 12], [23, 23]]                   # p1-p2, p2-p3, p3-p4
    assert negative.tolist() == [[4, 4], [15, 15], [26, 26]]                   # p1-n1, p2-n2, p3-n3
    _, child = losses.chain_angles(pos, neg, torch.zeros(8), "child")
    assert child.tolist() == [[5, 5], [16, 16], [27, 27]]                      # p1-n2, p2-n3, p3-n4
    with pytest.raises(ValueError, match="pairing"):
        losses.chain_angles(pos, neg, torch.zeros(8), "cousin")


def test_re_loss_terms_on_a_hand_built_chain() -> None:
    pos, neg, root = chain_example()
    terms = re_loss(pos, neg, root, pos, neg, LossWeights(pullback=0.0))
    # P = [0, 0, 0]; N = -[pi/2, pi/2, pi]; RE = mean(P) + mean(N); hard = (P+N)[argmax P] + (P+N)[argmax N]
    assert float(terms["re"]) == pytest.approx(-2 * PI / 3, abs=1e-3)
    assert float(terms["hard"]) == pytest.approx(-PI, abs=1e-3)
    assert float(terms["loss"]) == pytest.approx(-2 * PI / 3 - PI, abs=2e-3)


def chains_from_tier_major(E: torch.Tensor, bsz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(8B, d) tier-major rows -> positive and negative chains (B, 4, d)."""
    chains = E.view(2, 4, bsz, -1).transpose(1, 2)
    return chains[0], chains[1]


def test_re_loss_equals_the_reference_trainers_objective_on_random_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    for bsz in (1, 8, 13):
        E, E_orig, root = (torch.nn.functional.normalize(torch.randn(n, 24, generator=generator, dtype=torch.float64),
                                                         dim=-1) for n in (8 * bsz, 8 * bsz, 1))
        reference = reference_batch_loss(E, E_orig, root[0])
        pos, neg = chains_from_tier_major(E, bsz)
        pos_orig, neg_orig = chains_from_tier_major(E_orig, bsz)
        terms = re_loss(pos, neg, root[0], pos_orig, neg_orig)
        for ours, theirs in (("pullback", "ploss"), ("re", "eloss"), ("hard", "mloss"), ("loss", "total")):
            assert float(terms[ours]) == pytest.approx(float(reference[theirs]), abs=1e-6), (bsz, ours)


def test_cone_loss_terms_on_a_hand_built_chain() -> None:
    pos, neg, root = chain_example()
    terms = cone_loss(pos, neg, root, pos, neg, LossWeights(pullback=0.0, hard=0.0))
    # children inside their parent's cone cost 0; negatives at pi/2 and pi lie outside m + psi: cost 0 too
    assert float(terms["cone"]) == pytest.approx(0.0, abs=1e-9)
    bad = t((2, 0), (3, 0), (4, 0), (9, 9))[None]              # each sibling placed exactly where the child is
    psi = cone_half_aperture(pos[0, :-1], root, 0.1)           # asin(0.1 / [1, 2, 3])
    terms = cone_loss(pos, bad, root, pos, bad, LossWeights(pullback=0.0, hard=0.0))
    assert float(terms["cone"]) == pytest.approx(float((0.1 + psi).mean()), abs=1e-3)


def test_pullback_is_zero_for_the_same_embeddings_and_half_for_orthogonal_ones() -> None:
    e = t((1, 0), (0, 1))
    assert float(pullback(e, e)) == 0
    assert float(pullback(e, t((0, 1), (1, 0)))) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(offline_train_split()[:400], tmp_path_factory.mktemp("data") / "train.csv")


def config(model: str | Path, train: Path, out: Path, **kwargs: object) -> FinetuneConfig:
    defaults = dict(model=str(model), train=str(train), out=str(out), lr=3e-3, batch_size=8, steps=40,
                    eval_every=20, checkpoint_every=10, val_fraction=0.1, progress=False, device="cpu")
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


def test_trainer_batch_loss_equals_the_reference_on_a_trained_model(tiny_clip: Path, train_file: Path,
                                                                    tmp_path: Path) -> None:
    """After a few steps (so the pullback is not zero), the trainer's loss on a batch equals the reference
    objective computed from the live model and a freshly loaded starting model, in the reference's text order."""
    trainer = Trainer(config(tiny_clip, train_file, tmp_path / "run", steps=3, checkpoint_every=100))
    trainer.train()
    trainer.encoder.model.double()                                    # compare in float64, as the pure-tensor test
    trainer.starting_weights = [w.double() for w in trainer.starting_weights]
    rows = trainer.val_rows[:8]
    texts = tier_major_texts([list(r.positive) for r in rows], [list(r.negative) for r in rows])
    start = load_encoder(str(tiny_clip), device="cpu")
    start.model.double()
    with torch.no_grad():
        ours = trainer.batch_terms(rows)[0]
        E, E_orig, root = (torch.nn.functional.normalize(model.text_features(batch), dim=-1) for model, batch in
                           ((trainer.encoder, texts), (start, texts), (trainer.encoder, [""])))
    reference = reference_batch_loss(E, E_orig, root[0])
    assert float(reference["ploss"]) > 1e-4                           # the model moved: pullback is in play
    for name, theirs in (("pullback", "ploss"), ("re", "eloss"), ("hard", "mloss"), ("loss", "total")):
        assert float(ours[name]) == pytest.approx(float(reference[theirs]), abs=1e-6), name


def _finetune_cmd(model: Path, train: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hierarcaps", "finetune", "--model", str(model), "--train", str(train),
            "--out", str(out), "--lr", "3e-3", "--steps", "12", "--checkpoint-every", "2", "--eval-every", "6",
            "--device", "cpu", "--quiet"]


@pytest.mark.integration
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
    Trainer(config(tiny_clip, train_file, tmp_path / "run", steps=10)).train()
    with pytest.raises(HierarcapsError, match="different run"):
        Trainer(config(tiny_clip, train_file, tmp_path / "run", steps=10, lr=1e-2)).train()


def test_training_files_sharing_test_images_are_refused(tiny_clip: Path, tmp_path: Path) -> None:
    test_images = {r.image_file for r in load_official("test")}
    leaky = [r for r in load_official("test_expanded") if r.image_file in test_images][:50]
    path = write_csv(leaky, tmp_path / "leaky.csv")
    with pytest.raises(DataError, match="shares"):
        Trainer(config(tiny_clip, path, tmp_path / "run"))


def test_open_clip_text_tower_fine_tunes_and_reloads_from_its_folder(train_file: Path, tmp_path: Path) -> None:
    from hierarcaps.models.random_models import write_open_clip_config

    spec = "open_clip:" + str(write_open_clip_config(tmp_path / "tiny-oc.json"))
    trainer = Trainer(config(spec, train_file, tmp_path / "run", steps=6, checkpoint_every=100))
    visual = {k: v.clone() for k, v in trainer.encoder.model.visual.state_dict().items()}
    final = trainer.train()
    assert all(torch.equal(trainer.encoder.model.visual.state_dict()[k], v) for k, v in visual.items())
    reloaded = load_encoder(str(final), device="cpu")
    texts = ["animal", "a dog on a couch"]
    assert torch.allclose(torch.from_numpy(reloaded.encode_text(texts)),
                          torch.from_numpy(trainer.encoder.encode_text(texts)), atol=1e-6)


@pytest.mark.integration
def test_re_fine_tuning_raises_held_out_d_corr_of_the_real_minilm_and_the_child_pairing_does_not(
        tmp_path: Path) -> None:
    """Real data, a real pretrained model: a short run on the offline split lifts held-out d_corr (images never
    trained on) by a clear margin with the reference pairing; the child-pairing ablation, same budget, does not."""
    def held_out_curve(pairing: str) -> list[float]:
        trainer = Trainer(FinetuneConfig(model="minilm", train="offline", out=str(tmp_path / pairing), lr=1e-5,
                                         batch_size=8, steps=30, eval_every=30, val_rows=96, warmup_steps=0,
                                         negative_pairing=pairing, checkpoint_every=1000, progress=False,
                                         device="cpu"))
        trainer.train()
        return [e["val_d_corr"] for e in trainer.log if "val_d_corr" in e]

    sibling, child = held_out_curve("sibling"), held_out_curve("child")
    assert sibling[0] == child[0]                              # the same starting model and held-out rows
    assert sibling[-1] > sibling[0] + 0.08, sibling
    assert child[-1] < child[0] + 0.02, child


def test_default_fine_tuning_follows_the_authors_trainer_step_by_step(tiny_clip: Path, train_file: Path,
                                                                      tmp_path: Path) -> None:
    """With the defaults (no clipping, fp32, AdamW with torch's settings, no warm-up), every step's loss and the
    final weights equal an independent loop: the reference objective on the reference's text order, with its
    own root forward and its own torch AdamW over the text tower, fed the same rows."""
    from transformers import CLIPModel, CLIPTokenizerFast

    from hierarcaps.training import batch_rows

    steps, lr = 4, 1e-3
    trainer = Trainer(config(tiny_clip, train_file, tmp_path / "run", lr=lr, steps=steps, eval_every=100,
                             checkpoint_every=100))
    assert trainer.config.max_grad_norm is None and trainer.config.precision == "fp32"
    trainer.train()
    ours = [entry["loss"] for entry in trainer.log if "loss" in entry]

    model, frozen = (CLIPModel.from_pretrained(tiny_clip).eval() for _ in range(2))
    tokenizer = CLIPTokenizerFast.from_pretrained(tiny_clip)
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [*model.text_model.parameters(), *model.text_projection.parameters()]
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=lr)

    def embed(clip: CLIPModel, texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        out = clip.get_text_features(**tokens)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return out / out.norm(dim=-1, keepdim=True)

    theirs = []
    for rows in (next(batch_rows(len(trainer.train_rows), 8, 0, step)) for step in range(steps)):
        chosen = [trainer.train_rows[i] for i in rows]
        texts = tier_major_texts([list(r.positive) for r in chosen], [list(r.negative) for r in chosen])
        optimizer.zero_grad()
        with torch.no_grad():
            original = embed(frozen, texts)
        loss = reference_batch_loss(embed(model, texts), original, embed(model, [""])[0])["total"]
        loss.backward()
        optimizer.step()
        theirs.append(float(loss))
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    assert theirs[-1] != pytest.approx(theirs[0], abs=1e-3)                   # the trajectory really moved
    clipped = Trainer(config(tiny_clip, train_file, tmp_path / "clipped", lr=lr, steps=steps, eval_every=100,
                             checkpoint_every=100, max_grad_norm=0.1))                # the control: an option
    clipped.train()
    assert [e["loss"] for e in clipped.log if "loss" in e][1:] != pytest.approx(theirs[1:], rel=1e-4, abs=1e-5)
    assert torch.allclose(trainer.encoder.model.text_projection.weight, model.text_projection.weight, atol=1e-5)


def test_every_training_setting_is_an_option_of_the_command() -> None:
    import dataclasses

    from hierarcaps.finetune.commands import OPTIONS

    assert set(OPTIONS) == {f.name for f in dataclasses.fields(FinetuneConfig)} - {"progress"}


AUTHORS_LOADING = """
import json, sys
import torch
from transformers import AutoProcessor, CLIPModel
folder, texts = sys.argv[1], json.loads(sys.argv[2])
clip, proc = CLIPModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
with torch.no_grad():
    out = clip.get_text_features(**proc(text=texts, return_tensors="pt", padding=True))
print(json.dumps((out / out.norm(dim=-1, keepdim=True)).tolist()))
"""


def transformers4_python() -> str | None:
    """$HIERARCAPS_TRANSFORMERS4_PYTHON, or the environment .ci/run builds beside the repository."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("HIERARCAPS_TRANSFORMERS4_PYTHON"),
                  str(repo / ".venv-transformers4" / "bin" / "python")]
    return next((c for c in candidates if c and Path(c).exists()), None)


@pytest.mark.integration
def test_the_authors_evaluation_loading_reads_a_fine_tuned_folder(tiny_clip: Path, train_file: Path,
                                                                   tmp_path: Path) -> None:
    """transformers 4.x, as the authors' evaluation loads a checkpoint (CLIPModel and AutoProcessor), reads a
    fine-tuned folder and embeds texts as this package does."""
    python = transformers4_python()
    if python is None:
        if os.environ.get("HIERARCAPS_REQUIRE_SERVICES"):
            pytest.fail("HIERARCAPS_REQUIRE_SERVICES is set but no transformers 4 environment was found")
        pytest.skip("no transformers 4 environment (.ci/run builds one in .venv-transformers4)")
    final = Trainer(config(tiny_clip, train_file, tmp_path / "run", steps=2, checkpoint_every=100)).train()
    texts = ["animal", "a goat on an island", "a goat eating leaves of a lemon tree on the island"]
    done = subprocess.run([python, "-c", AUTHORS_LOADING, str(final), json.dumps(texts)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    ours = torch.from_numpy(load_encoder(str(final), device="cpu").encode_text(texts))
    assert torch.allclose(ours, theirs, atol=1e-5)
