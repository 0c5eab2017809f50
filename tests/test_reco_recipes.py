"""Training recipes aimed at unseen concepts: the vote fusion, neighbour dropout and noisy-memory training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_reco import DIM, unit

from hierarcaps.errors import DataError
from hierarcaps.reco.config import RecoConfig
from hierarcaps.reco.encoder import refine
from hierarcaps.reco.fusion import VOTE_SCALE, FusionConfig, build_fusion
from hierarcaps.reco.memory import Memory, MemoryItem
from hierarcaps.reco.memory_build import BuildOptions, write_memory
from hierarcaps.reco.objectives import Pairs
from hierarcaps.reco.saved import load_fusion
from hierarcaps.reco.train import RecoTrainer


def normalised(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_the_vote_follows_the_neighbours_that_agree_and_is_mean_fusion_at_sharpness_zero() -> None:
    """Four neighbours say a, one says b (orthogonal): agreements 3/4 and 0. Sharp, the vote reads a alone
    (each a counting 5/4: (q + 5a) / 6); at zero sharpness it is mean fusion."""
    query, a, b = torch.eye(DIM)[:3]
    neighbours = torch.stack([a, a, a, a, b])[None]
    vote = build_fusion(FusionConfig(kind="vote", dim=DIM))
    mean = build_fusion(FusionConfig(kind="mean", dim=DIM))
    torch.testing.assert_close(vote(query[None], neighbours), mean(query[None], neighbours))
    with torch.no_grad():
        vote.sharpness.fill_(1000 / VOTE_SCALE)
    torch.testing.assert_close(vote(query[None], neighbours), normalised(query + 5 * a)[None])
    with torch.no_grad():
        vote.sharpness.fill_(1 / VOTE_SCALE)          # softly: a's weight exp(3/4) against b's exp(0), of 5 votes
    share = np.exp(0.75) / (4 * np.exp(0.75) + 1)
    expected = normalised(query + 5 * (4 * share * a + (1 - 4 * share) * b))
    torch.testing.assert_close(vote(query[None], neighbours), expected[None])
    with torch.no_grad():
        vote.mix.fill_(1.0)                           # mix 1: the query itself
    torch.testing.assert_close(vote(query[None], neighbours), query[None])
    assert float(build_fusion(FusionConfig(kind="vote", dim=DIM, start="query")).mix.item()) == 1.0


@pytest.mark.parametrize("kind", ["transformer", "mlp", "vote", "mean"])
def test_a_dropped_neighbour_is_not_read(kind: str) -> None:
    """With trained (random) weights, masking neighbours out gives exactly what leaving them out gives."""
    generator = torch.Generator().manual_seed(0)
    query = normalised(torch.randn(6, DIM, generator=generator))
    neighbours = normalised(torch.randn(6, 5, DIM, generator=generator))
    module = build_fusion(FusionConfig(kind=kind, dim=DIM, heads=2)).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    present = torch.tensor([True, False, True, True, False])
    masked = module(query, neighbours, present.expand(6, 5))
    torch.testing.assert_close(masked, module(query, neighbours[:, present]), atol=1e-5, rtol=1e-5)
    assert (masked - module(query, neighbours)).abs().max() > 1e-3       # and the dropped ones did matter


def clustered(folder: Path, classes: int = 200, per: int = 10, wrong: float = 0.75, seed: int = 0
              ) -> tuple[Memory, np.ndarray, np.ndarray, np.random.Generator]:
    """A memory whose texts name the item's class for a quarter of the items and a random class otherwise: the
    right text is the one the neighbours agree on. Returns the memory, the image and text class centroids."""
    rng = np.random.default_rng(seed)
    u, v = unit(rng.standard_normal((classes, DIM))), unit(rng.standard_normal((classes, DIM)))
    labels = np.repeat(np.arange(classes), per)
    named = np.where(rng.random(len(labels)) < wrong, rng.integers(classes, size=len(labels)), labels)
    images = unit(u[labels] + 0.3 * unit(rng.standard_normal((len(labels), DIM))))
    texts = unit(v[named] + 0.3 * unit(rng.standard_normal((len(labels), DIM))))
    items = [MemoryItem(f"m{i}", "", group=f"m{i}") for i in range(len(labels))]
    return Memory(write_memory(folder, images, texts, items, BuildOptions(index="flat"))), u, v, rng


def class_pairs(u: np.ndarray, v: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                groups: list[str] | None = None) -> Pairs:
    names = [f"c{c}" for c in classes]
    images = unit(u[classes] + 0.3 * unit(rng.standard_normal((len(classes), DIM))))
    return Pairs(images, v[classes].copy(), groups or [f"p{i}" for i in range(len(classes))], keys=names,
                 labels=names)


def test_the_vote_learns_to_follow_the_majority_and_beats_mean_fusion_on_unseen_classes(tmp_path: Path) -> None:
    memory, u, v, rng = clustered(tmp_path / "mem")
    pairs = class_pairs(u, v, np.repeat(np.arange(100), 6), rng)
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "vote"), fusion="vote", k=8, steps=200,
                        eval_every=25, batch_size=64, lr=3e-3, sides="image", keep="last", patience=None,
                        progress=False)
    trainer = RecoTrainer(config, pairs)
    trainer.train()
    unseen = np.arange(100, 200)
    queries = unit(u[np.repeat(unseen, 5)] + 0.3 * unit(rng.standard_normal((500, DIM))))
    truth = np.repeat(np.arange(100), 5)

    def accuracy(modules: dict) -> float:
        return float((np.argmax(refine(modules, memory, queries, "image", 8) @ v[unseen].T, 1) == truth).mean())

    learned, mean = accuracy(dict(trainer.modules)), accuracy(dict(trainer.mean_modules))
    assert trainer.modules["image"].sharpness.item() > 0                # it learned to weigh agreement
    assert learned > mean, (learned, mean)                               # and that reads unseen classes better
    _, saved = load_fusion(tmp_path / "vote")                             # the saved model is the trained one
    torch.testing.assert_close(torch.from_numpy(refine(saved, memory, queries, "image", 8)),
                               torch.from_numpy(refine(dict(trainer.modules), memory, queries, "image", 8)))


def test_training_neighbours_are_perturbed_the_same_way_for_a_step_and_never_at_evaluation(tmp_path: Path) -> None:
    memory, u, v, rng = clustered(tmp_path / "mem", classes=40)
    groups = [f"m{i}" for i in range(0, 400, 2)]                  # each pair shares its group with a memory row
    pairs = class_pairs(u, v, np.repeat(np.arange(40), 5), rng, groups)
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "run"), k=8, sides="image",
                        memory_noise=0.5, neighbour_dropout=0.25, holdout="group", progress=False)
    trainer = RecoTrainer(config, pairs)
    rows = np.arange(len(groups))
    clean = trainer.neighbour_rows["image"][rows]
    found, present = trainer.perturbed(clean, rows, "image", step=3)
    swapped = found != clean
    assert 0.4 < swapped.mean() < 0.6                                  # about half swapped
    own = memory.group_codes[found] == trainer.pair_group_codes[rows][:, None]
    assert not own.any()                                               # never the pair's own image
    assert 0.65 < present.float().mean() < 0.85 and bool(present[:, 0].all())   # a quarter unread, the nearest read
    again, present_again = trainer.perturbed(clean, rows, "image", step=3)
    assert np.array_equal(found, again) and torch.equal(present, present_again)          # a step is a step
    assert not np.array_equal(found, trainer.perturbed(clean, rows, "image", step=4)[0])  # and the next differs
    _, unperturbed = trainer._neighbours("image", rows)
    assert unperturbed is None                                        # evaluation reads every true neighbour


def test_reco_json_records_where_training_ended_beside_the_kept_step(tmp_path: Path) -> None:
    _, u, v, rng = clustered(tmp_path / "mem", classes=60)
    pairs = class_pairs(u, v, np.repeat(np.arange(60), 5), rng)
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "run"), k=4, heads=2, steps=30,
                        eval_every=10, batch_size=32, lr=3e-3, sides="image", progress=False)
    RecoTrainer(config, pairs).train()
    scores = json.loads((tmp_path / "run" / "reco.json").read_text())["selection"]["scores"]
    assert set(scores["learned_last_step"]) == set(scores["learned"]) == {"select", "decide", "in_distribution"}


def test_the_vote_without_its_residual_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="residual"):
        RecoConfig(memory="m", out="o", fusion="auto", learned="vote", residual=False)
