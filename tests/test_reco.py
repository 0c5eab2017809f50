"""RECO: memory and search, and proof that trained fusion learns what the frozen embedding lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hierarcaps.errors import HierarcapsError
from hierarcaps.reco.config import RecoConfig
from hierarcaps.reco.encoder import refine
from hierarcaps.reco.memory import Memory, MemoryItem
from hierarcaps.reco.memory_build import BuildOptions, write_memory
from hierarcaps.reco.objectives import Pairs
from hierarcaps.reco.train import RecoTrainer

DIM, CLASSES, BLOCK = 32, 320, 20


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class World:
    """Classes with unrelated image and text centroids: the frozen image embedding says nothing about the
    class's text. The memory pairs each class's images with texts, most of them wrong (a fixed confusable
    class's text) and marked by a shared direction; only a model that looks at each neighbour can tell
    them apart. Training uses other classes than evaluation, so memorising classes does not help."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.u = unit(self.rng.standard_normal((CLASSES, DIM)))
        self.v = unit(self.rng.standard_normal((CLASSES, DIM)))
        self.marker = unit(self.rng.standard_normal(DIM))

    def noise(self, n: int, scale: float) -> np.ndarray:
        return scale * unit(self.rng.standard_normal((n, DIM)))

    def images(self, classes: np.ndarray) -> np.ndarray:
        return unit(self.u[classes] + self.noise(len(classes), 0.5))

    def texts(self, classes: np.ndarray) -> np.ndarray:
        return unit(self.v[classes] + self.noise(len(classes), 0.2))

    @staticmethod
    def confusable(classes: np.ndarray) -> np.ndarray:
        """The next class within the same block of BLOCK classes."""
        return classes - classes % BLOCK + (classes % BLOCK + 1) % BLOCK

    def memory(self, folder: Path, per_class: int = 12, wrong: float = 0.75) -> Memory:
        classes = np.repeat(np.arange(CLASSES), per_class)
        n = len(classes)
        marked = self.rng.random(n) < wrong
        text = self.texts(classes)
        text[marked] = unit(self.v[self.confusable(classes[marked])] + 0.8 * self.marker
                            + self.noise(marked.sum(), 0.2))
        items = [MemoryItem(f"m{i}", f"class {c}", source="synthetic") for i, c in enumerate(classes)]
        return Memory(write_memory(folder, self.images(classes), text, items, BuildOptions(index="flat")))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_search_excludes_the_query_group_and_near_duplicates_only_when_asked(world: World, tmp_path: Path) -> None:
    memory = world.memory(tmp_path / "mem", per_class=2)
    queries = np.asarray(memory.vectors["image"][:5])
    _, rows = memory.search(queries, "image", 4)
    np.testing.assert_array_equal(rows[:, 0], np.arange(5))      # at inference nothing is excluded
    _, rows = memory.search(queries, "image", 4, duplicate_threshold=0.98)
    assert not (rows == np.arange(5)[:, None]).any()              # identical vectors sit above the threshold
    _, rows = memory.search(queries, "image", 4, exclude_groups=["m0", "m1", "m2", "m3", "m4"],
                            duplicate_threshold=1.1)
    assert not (rows == np.arange(5)[:, None]).any()              # excluded by group (its id), threshold off
    neighbours = memory.neighbours(queries, "image", 4)
    assert neighbours.shape == (5, 4, DIM)
    np.testing.assert_array_equal(neighbours[:, 0], memory.vectors["text"][:5])   # each query's own pair
    with pytest.raises(HierarcapsError, match="fewer than k"):
        memory.search(queries, "image", 640, exclude_groups=["m0", "m1", "m2", "m3", "m4"])
    assert memory.stats()["items"] == 640


ACCURACY: dict[str, tuple[float, float]] = {}


def frozen_and_refined_accuracy(kind: str, folder: Path) -> tuple[float, float]:
    """Accuracy on never-seen classes before and after fusion of ``kind``, trained in a world of its own (seed 0),
    so the value never depends on which test ran first; computed once per kind."""
    if kind not in ACCURACY:
        world = World()
        memory = world.memory(folder / "mem")
        unseen = np.arange(CLASSES - BLOCK, CLASSES)                  # the last block: never seen in training
        train_classes = world.rng.integers(0, CLASSES - BLOCK, 3000)
        names = [f"class {c}" for c in train_classes]
        trainer = RecoTrainer(RecoConfig(memory=str(folder / "mem"), out=str(folder / kind), fusion=kind, heads=4,
                                         k=8, sides="image", steps=600, batch_size=128, lr=1e-2, eval_every=100,
                                         holdout="class", val_fraction=0.1, progress=False),
                              Pairs(world.images(train_classes), world.texts(train_classes),
                                    [f"train-{i}" for i in range(len(train_classes))], keys=names, labels=names))
        trainer.train()
        test_classes = world.rng.choice(unseen, 500)
        queries = world.images(test_classes)
        candidates = world.v[unseen]
        frozen = float((np.argmax(queries @ candidates.T, axis=1) == test_classes - unseen[0]).mean())
        refined = refine(dict(trainer.modules), memory, queries, "image", 8)
        ACCURACY[kind] = frozen, float((np.argmax(refined @ candidates.T, axis=1) == test_classes - unseen[0]).mean())
    return ACCURACY[kind]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["transformer", "mean", "mlp"])
def test_where_each_neighbour_must_be_judged_the_transformer_beats_mean_and_mlp(
        kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A task built so that only attention to each neighbour helps: a check that the transformer can use it
    (starting from mean fusion, selected on held-out classes), not evidence that RECO works on data nobody
    designed around it."""
    frozen, accuracy = frozen_and_refined_accuracy(kind, tmp_path_factory.mktemp(kind))
    assert frozen < 0.15                                          # chance is 0.05
    if kind == "transformer":
        assert accuracy > frozen + 0.4, (frozen, accuracy)
    else:                                                         # mean, and the equal-size MLP: clearly behind
        transformer = frozen_and_refined_accuracy("transformer", tmp_path_factory.mktemp("transformer"))[1]
        assert accuracy < transformer - 0.2, (frozen, accuracy, transformer)


@pytest.fixture(scope="module")
def tiny_clip_spec(tiny_clip: Path) -> str:
    return str(tiny_clip)


def memory_csv(folder: Path, image_dir: Path, rows: int) -> Path:
    """Test images with *expanded-set* captions (other captions than the test tiers)."""
    import csv

    from hierarcaps.data import load_official

    caption = {r.image_file: r.positive[-1] for r in load_official("test_expanded")}
    path = folder / "memory.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for r in load_official("test")[:rows]:
            writer.writerow([image_dir / r.image_file, caption[r.image_file]])
    return path


def test_memory_build_resumes_after_a_failure(tiny_clip_spec: str, tmp_path: Path, test_image_dir: Path) -> None:
    from hierarcaps.models import load_encoder
    from hierarcaps.reco.memory_build import BuildOptions, build_memory
    from hierarcaps.reco.sources import load_items

    items = load_items(str(memory_csv(tmp_path, test_image_dir, 30)))
    encoder = load_encoder(tiny_clip_spec)

    class FailsOnThirdShard:
        name, has_images, calls = encoder.name, True, 0

        def encode_text(self, texts):
            FailsOnThirdShard.calls += 1
            if FailsOnThirdShard.calls == 3:
                raise KeyboardInterrupt
            return encoder.encode_text(texts)

        def encode_image(self, images, **kwargs):
            return encoder.encode_image(images, workers=0)

        def fingerprint(self):
            return encoder.fingerprint()

    with pytest.raises(KeyboardInterrupt):
        build_memory(tmp_path / "resumed", items, FailsOnThirdShard(), BuildOptions(), shard_size=10)
    assert len(list((tmp_path / "resumed" / "shards").glob("*/DONE"))) == 2
    FailsOnThirdShard.calls = 10
    build_memory(tmp_path / "resumed", items, FailsOnThirdShard(), BuildOptions(), shard_size=10)
    assert FailsOnThirdShard.calls == 11                         # only the unfinished shard was embedded
    build_memory(tmp_path / "straight", items, FailsOnThirdShard(), BuildOptions(), shard_size=10)
    resumed, straight = Memory(tmp_path / "resumed"), Memory(tmp_path / "straight")
    for modality in ("image", "text"):
        np.testing.assert_array_equal(resumed.vectors[modality], straight.vectors[modality])
    assert resumed.ids == straight.ids and not (tmp_path / "resumed" / "shards").exists()


@pytest.mark.integration
def test_reco_model_scores_through_the_harness_and_zero_shot(tiny_clip_spec: str, tmp_path: Path,
                                                              test_image_dir: Path) -> None:
    import shutil
    import subprocess
    import sys

    from hierarcaps.data import load_official, write_csv
    from hierarcaps.harness.evaluation import EvalOptions, evaluate
    from hierarcaps.harness.zeroshot import image_folder, zero_shot
    from hierarcaps.models import load_encoder

    source = memory_csv(tmp_path, test_image_dir, 60)
    run = lambda *args: subprocess.run([sys.executable, "-m", "hierarcaps", *args], capture_output=True,  # noqa: E731
                                       text=True)
    built = run("reco", "memory", str(source), "--model", tiny_clip_spec, "--out", str(tmp_path / "mem"))
    assert built.returncode == 0, built.stderr
    # A random tiny CLIP embeds all images very alike (hence the threshold), so what auto would keep turns on
    # rounding; this test is about a learned fusion on both sides scoring through the harness, so it asks for one.
    trained = run("reco", "train", "--memory", str(tmp_path / "mem"), "--base", tiny_clip_spec, "--out",
                  str(tmp_path / "reco"), "--fusion", "transformer", "--start", "mean", "--k", "4", "--heads", "2",
                  "--steps", "10", "--batch-size", "16", "--duplicate-threshold", "0.99999", "--holdout", "group")
    assert trained.returncode == 0, trained.stderr
    reco, base = load_encoder(f"reco:{tmp_path / 'reco'}"), load_encoder(tiny_clip_spec)
    texts = ["a dog", "a plate of food"]
    assert not np.allclose(reco.encode_text(texts), base.encode_text(texts))
    subset = write_csv(load_official("test")[:40], tmp_path / "subset.csv", fmt="test")
    result = evaluate(f"reco:{tmp_path / 'reco'}", EvalOptions(data=str(subset), image_dir=str(test_image_dir),
                                                                progress=False, workers=0, resamples=20))
    assert result["model"]["memory_items"] == 60 and result["model"]["refined_sides"] == ["image", "text"]
    assert {"precision", "i2t_R@1", "d_corr"} <= set(result["metrics"])
    classes = tmp_path / "classes"
    for label, records in (("dog", load_official("test")[:3]), ("cat", load_official("test")[3:6])):
        (classes / label).mkdir(parents=True)
        for r in records:
            shutil.copy(test_image_dir / r.image_file, classes / label / r.image_file)
    accuracy = zero_shot(reco, *image_folder(classes), workers=0)
    assert accuracy["images"] == 6 and accuracy["classes"] == 2 and 0 <= accuracy["top1"] <= 1


def test_a_learned_fusion_starts_exactly_as_mean_fusion_and_the_query_start_as_the_identity() -> None:
    import torch

    from hierarcaps.reco.fusion import FusionConfig, build_fusion

    generator = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(64, 512, generator=generator), dim=-1)
    neighbours = torch.nn.functional.normalize(torch.randn(64, 16, 512, generator=generator), dim=-1)
    mean = build_fusion(FusionConfig(kind="mean", dim=512))(query, neighbours)
    for kind in ("transformer", "mlp"):
        torch.manual_seed(0)
        start = build_fusion(FusionConfig(kind=kind, dim=512))(query, neighbours)
        assert (start - mean).abs().max() < 1e-6, kind                     # mean fusion's vectors, to 1e-6
        module = build_fusion(FusionConfig(kind=kind, dim=512, start="query"))
        refined = module(query, neighbours)
        assert (refined * query).sum(-1).min() > 0.9, kind                 # each query keeps its own embedding
        off_diagonal = (refined @ refined.T)[~torch.eye(64, dtype=torch.bool)]
        assert off_diagonal.abs().max() < 0.5, kind                        # and queries stay apart (no collapse)
        with torch.no_grad():                                              # once trained, the update is the
            for p in module.parameters():                                  # layer's own: query + update, once
                p.add_(0.01 * torch.randn(p.shape, generator=generator))
        update = module(query, neighbours)
        if kind == "transformer":
            tokens = torch.cat([query[:, None], neighbours], 1) + module.type_embedding(
                torch.tensor([0] + [1] * 16))
            expected = query + module.layer(tokens)[:, 0] - tokens[:, 0]
            torch.testing.assert_close(update, torch.nn.functional.normalize(expected, dim=-1))
    plain = build_fusion(FusionConfig(kind="transformer", dim=512, residual=False))
    assert (plain(query, neighbours) * query).sum(-1).mean() < 0.5            # --no-residual: no query added


def test_rows_of_the_query_group_are_never_neighbours(tmp_path: Path) -> None:
    """Several captions per image: a query must not retrieve its own image's other captions (the answer)."""
    rng = np.random.default_rng(0)
    images = unit(np.repeat(rng.standard_normal((50, DIM)), 4, axis=0) + 0.05 * rng.standard_normal((200, DIM)))
    texts = unit(rng.standard_normal((200, DIM)))
    items = [MemoryItem(f"r{i}", f"caption {i}", group=f"img{i // 4}") for i in range(200)]
    memory = Memory(write_memory(tmp_path / "mem", images, texts, items, BuildOptions(index="flat")))
    groups = [f"img{i // 4}" for i in range(200)]
    _, rows = memory.search(images, "image", 8, exclude_groups=groups, duplicate_threshold=1.1)
    assert not (rows // 4 == np.arange(200)[:, None] // 4).any()
    _, leaky = memory.search(images, "image", 8, exclude_groups=[f"r{i}" for i in range(200)],
                             duplicate_threshold=1.1)
    assert (leaky // 4 == np.arange(200)[:, None] // 4).any()           # the control: ids alone leak siblings
    trainer = RecoTrainer(RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "run"), k=4, heads=2,
                                     steps=0, val_fraction=0.2, progress=False), Pairs(images, texts, groups))
    parts = trainer.splits
    held = {groups[i] for part in (parts.select, parts.decide, parts.in_distribution) for i in part}
    assert held and not held & {groups[i] for i in trainer.train_rows}  # validation holds out whole images
    for side in ("image", "text"):
        assert not (trainer.neighbour_rows[side] // 4 == np.arange(200)[:, None] // 4).any()


def test_memories_swap_at_scoring_and_the_fingerprint_follows_their_content(tiny_clip_spec: str,
                                                                           tmp_path: Path) -> None:
    import json
    import shutil

    from hierarcaps.models import load_encoder

    rng = np.random.default_rng(1)
    dim = load_encoder(tiny_clip_spec).encode_text(["x"]).shape[1]

    def memory(folder: Path, seed: int) -> Path:
        r = np.random.default_rng(seed)
        items = [MemoryItem(f"m{i}", "", group=f"g{i}") for i in range(64)]
        return write_memory(folder, unit(r.standard_normal((64, dim))), unit(r.standard_normal((64, dim))), items,
                            BuildOptions(index="flat"))

    first, second = memory(tmp_path / "mem-a", 0), memory(tmp_path / "mem-b", 1)
    groups = [f"p{i}" for i in range(64)]
    RecoTrainer(RecoConfig(memory=str(first), out=str(tmp_path / "reco"), base=tiny_clip_spec, k=4, heads=2, steps=3,
                           batch_size=16, fusion="transformer", start="mean", progress=False),
                Pairs(unit(rng.standard_normal((64, dim))), unit(rng.standard_normal((64, dim))), groups)).train()
    assert json.loads((tmp_path / "reco" / "reco.json").read_text())["memory"] == "../mem-a"   # relative
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(tmp_path / "reco", moved / "reco")
    shutil.copytree(first, moved / "mem-a")
    a = load_encoder(f"reco:{moved / 'reco'}")
    swapped = load_encoder(f"reco:{moved / 'reco'}?memory={second}")
    assert len(a.memory) == len(swapped.memory) == 64 and a.fingerprint() != swapped.fingerprint()
    texts = ["a dog", "a red car"]
    assert not np.allclose(a.encode_text(texts), swapped.encode_text(texts))
    memory(moved / "mem-a", 2)                                 # rebuilt in place with other vectors
    assert load_encoder(f"reco:{moved / 'reco'}").fingerprint() != a.fingerprint()
    with pytest.raises(HierarcapsError, match="options are"):
        load_encoder(f"reco:{moved / 'reco'}?memroy={second}")


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220), "yellow": (230, 220, 30),
           "purple": (140, 30, 190), "cyan": (30, 210, 220)}


def colour_images(folder: Path, names: list[str], per_class: int, seed: int) -> dict[str, list[Path]]:
    """Photos of nothing but a colour, with noise and a random rectangle: a random network tells colours apart
    by their pixels, but has no idea which word names which colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        out[name] = []
        for i in range(per_class):
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (64, 64, 3)), 0, 255)
            x, y = rng.integers(0, 40, 2)
            pixels[y:y + 20, x:x + 20] *= rng.uniform(0.5, 1.0)
            path = folder / name / f"{name}_{seed}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            out[name].append(path)
    return out


@pytest.mark.integration
def test_zero_shot_on_classes_outside_training_needs_the_memory_that_holds_them(tiny_clip_spec: str,
                                                                                tmp_path: Path) -> None:
    """RECO's setting through the CLI: the frozen model cannot name the colours; a memory of captioned photos
    can. The model is built on a memory of three colours and scored on three others, with the memory swapped
    for one that holds them (and, as the control, without). Mean fusion: trained fusion on three classes learns
    the classes themselves (a probe on the query), not retrieval, so it says nothing about unseen ones."""
    import csv
    import json
    import subprocess
    import sys

    seen, unseen = ["red", "green", "blue"], ["yellow", "purple", "cyan"]
    memory_images = colour_images(tmp_path / "memory-images", seen + unseen, 20, seed=0)
    held_out = tmp_path / "held-out"
    colour_images(held_out, unseen, 10, seed=1)
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n")

    def pairs_csv(path: Path, names: list[str]) -> Path:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "caption", "group"])
            for name in names:
                for image in memory_images[name]:
                    writer.writerow([image, f"a photo of a {name}.", image.name])
        return path

    run = lambda *args: subprocess.run([sys.executable, "-m", "hierarcaps", *args], capture_output=True,  # noqa: E731
                                       text=True, cwd=tmp_path)
    for name, names in (("seen", seen), ("all", seen + unseen)):
        built = run("reco", "memory", str(pairs_csv(tmp_path / f"{name}.csv", names)), "--model", tiny_clip_spec,
                    "--out", str(tmp_path / f"memory-{name}"))
        assert built.returncode == 0, built.stderr
    trained = run("reco", "train", "--memory", str(tmp_path / "memory-seen"), "--base", tiny_clip_spec, "--out",
                  str(tmp_path / "reco"), "--sides", "image", "--fusion", "mean", "--k", "8", "--steps", "0",
                  "--duplicate-threshold", "1.01")
    assert trained.returncode == 0, trained.stderr

    def top1(spec: str) -> float:
        done = run("zeroshot", "--model", spec, "--images", str(held_out), "--templates", str(templates))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["top1"]

    frozen = top1(tiny_clip_spec)
    without = top1(f"reco:{tmp_path / 'reco'}#image")
    swapped = top1(f"reco:{tmp_path / 'reco'}?memory={tmp_path / 'memory-all'}#image")
    assert frozen < 0.6 and without < 0.6 and swapped >= 0.9, (frozen, without, swapped)   # chance: 1/3


def clustered_pairs(rng: np.random.Generator, classes: int, per_class: int, dim: int = DIM) -> tuple:
    """Pairs whose texts are one vector per class (copies of a caption), images near a class centre."""
    centres, words = unit(rng.standard_normal((classes, dim))), unit(rng.standard_normal((classes, dim)))
    labels = np.repeat(np.arange(classes), per_class)
    images = unit(centres[labels] + 0.3 * unit(rng.standard_normal((len(labels), dim))))
    return images, words[labels].copy(), labels


def clustered_memory(folder: Path, seed: int, classes: int, per_class: int) -> Pairs:
    """A flat memory of :func:`clustered_pairs` in ``folder``, and the same pairs to train on (class names as
    keys, one group per pair)."""
    images, texts, labels = clustered_pairs(np.random.default_rng(seed), classes, per_class)
    items = [MemoryItem(f"m{i}", "", group=f"m{i}") for i in range(len(images))]
    write_memory(folder, images, texts, items, BuildOptions(index="flat"))
    return Pairs(images, texts, [f"g{i}" for i in range(len(images))], keys=[f"c{c}" for c in labels])


def test_validation_counts_every_copy_of_a_text_as_the_answer(tmp_path: Path) -> None:
    """Identical texts are one answer: the old R@1 credited only the first copy, capping it at 1/copies."""
    pairs = clustered_memory(tmp_path / "mem", 0, 10, 20)
    trainer = RecoTrainer(RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "run"), k=4, steps=0,
                                     holdout="group", val_fraction=0.3, progress=False), pairs)
    select = trainer.splits.select
    assert len(trainer.answer_sets["select"].keys) <= 10 < len(select)            # copies are one answer
    assert trainer.evaluate(trainer.mean_modules)["val_accuracy"] > 0.9            # reachable: not capped


def test_the_vocabulary_loss_never_uses_a_copy_of_the_answer_as_a_negative(tmp_path: Path) -> None:
    import torch

    pairs = clustered_memory(tmp_path / "mem", 1, 6, 10)
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "v"), k=4, sides="image", batch_size=8,
                        val_fraction=0.0, progress=False)
    trainer = RecoTrainer(config, pairs)
    rows = np.array([0, 1, 2, 3])                                  # four copies of the same caption
    torch.manual_seed(0)
    loss = trainer.vocabulary_loss(rows, 0)["image_vocabulary"]
    assert len(trainer.vocabulary.keys) == 6                       # one entry per distinct text, not per pair
    in_batch = RecoTrainer(RecoConfig(**{**config.__dict__, "objective": "in-batch", "out": str(tmp_path / "b")}),
                           pairs)
    duplicated = in_batch.in_batch_loss(rows, 0)["refined_image_text"]
    assert float(duplicated.detach()) > float(loss.detach()) + 0.5   # copies as negatives: an unlearnable loss


@pytest.mark.integration
def test_selection_keeps_the_best_step_and_auto_falls_back_to_mean(tmp_path: Path, tiny_clip_spec: str) -> None:
    """Held-out selection: the saved model never does worse on validation than mean fusion; with nothing to
    learn (random texts) ``--fusion auto`` uses mean fusion and says why; the model says so too."""
    import json

    from hierarcaps.models import load_encoder

    rng = np.random.default_rng(2)
    dim = load_encoder(tiny_clip_spec).encode_text(["x"]).shape[1]
    images, texts = unit(rng.standard_normal((400, dim))), unit(rng.standard_normal((400, dim)))
    items = [MemoryItem(f"m{i}", "", group=f"m{i}") for i in range(400)]
    write_memory(tmp_path / "mem", images, texts, items, BuildOptions(index="flat"))
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "reco"), base=tiny_clip_spec, k=4, heads=2,
                        steps=200, eval_every=20, patience=3, batch_size=32, lr=5e-3, val_fraction=0.2,
                        progress=False)
    trainer = RecoTrainer(config, Pairs(images, texts, [f"g{i}" for i in range(400)]))
    trainer.train()
    info = json.loads((tmp_path / "reco" / "reco.json").read_text())
    selection = info["selection"]
    evaluated = [e["val_accuracy"] for e in trainer.loop.log if "val_accuracy" in e]
    best = selection["best_free"]
    assert evaluated[0] == selection["select"][best]               # step 0 is the best training-free option
    assert selection["scores"]["learned"]["select"] == max(evaluated)       # the kept step is the best on select
    assert info["steps"] < 200                                     # stopped early
    low = selection["learned_minus_best_free"]["interval"][0]
    assert selection["used"] == (config.learned_kind() if low > 0 else trainer.free[best].kind)
    assert "held-out concepts" in selection["why"]
    model = load_encoder(f"reco:{tmp_path / 'reco'}")
    assert model.metadata()["fusion"] == selection["used"] and model.metadata()["fusion_choice"] == selection["why"]


def test_auto_takes_mean_fusion_on_the_query_side_where_it_beats_both_sides(tmp_path: Path) -> None:
    """Image and text centroids unrelated: mean fusion moves an image onto its class's text, but it also moves
    a text onto its class's image, so refining both sides undoes the gain. ``auto`` must weigh the query-side
    mean too, keep it where it wins, and save a model that refines that side alone."""
    from hierarcaps.reco.saved import load_fusion

    rng = np.random.default_rng(3)
    classes, per_class = 10, 30
    u, v = unit(rng.standard_normal((classes, DIM))), unit(rng.standard_normal((classes, DIM)))
    labels = np.repeat(np.arange(classes), per_class)
    images = unit(u[labels] + 0.3 * unit(rng.standard_normal((len(labels), DIM))))
    texts = v[labels].copy()
    items = [MemoryItem(f"m{i}", "", group=f"m{i}") for i in range(len(images))]
    write_memory(tmp_path / "mem", images, texts, items, BuildOptions(index="flat"))
    pairs = Pairs(images, texts, [f"g{i}" for i in range(len(images))], keys=[f"c{c}" for c in labels])
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "reco"), k=8, steps=0, val_fraction=0.3,
                        progress=False)
    RecoTrainer(config, pairs).train()
    info, modules = load_fusion(tmp_path / "reco")
    selection = info["selection"]
    assert selection["select"]["base"] < selection["select"]["mean"] < selection["select"]["mean_query_side"] == 1.0
    assert (selection["used"], selection["used_sides"], info["sides"]) == ("mean", ["image"], ["image"])
    assert list(modules) == ["image"] and not (tmp_path / "reco" / "fusion.safetensors").exists()
    assert selection["why"].endswith("using mean fusion on the query side")
    asked = RecoConfig(**{**config.__dict__, "fusion": "mean", "out": str(tmp_path / "asked")})
    RecoTrainer(asked, pairs).train()
    info, _ = load_fusion(tmp_path / "asked")
    assert info["sides"] == ["image", "text"]                      # what was asked for, not what auto would pick


def test_neighbours_are_precomputed_in_blocks_and_resume(tmp_path: Path, world: World) -> None:
    from hierarcaps.reco import neighbours as module

    memory = world.memory(tmp_path / "mem", per_class=2)
    queries = world.images(np.arange(50))
    groups = [f"m{i}" for i in range(50)]
    straight = module.neighbour_rows(memory, queries, "image", 4, groups, tmp_path / "straight", block=10)
    calls, failed = [], []
    original = module.NeighbourWorker.__call__

    def failing(self, task):
        calls.append(task["block"])
        if len(calls) == 3 and not failed:
            failed.append(task["block"])
            raise KeyboardInterrupt
        return original(self, task)

    module.NeighbourWorker.__call__ = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            module.neighbour_rows(memory, queries, "image", 4, groups, tmp_path / "resumed", block=10)
        calls.clear()
        resumed = module.neighbour_rows(memory, queries, "image", 4, groups, tmp_path / "resumed", block=10)
    finally:
        module.NeighbourWorker.__call__ = original
    assert calls == [2, 3, 4]                                      # only the unfinished blocks
    np.testing.assert_array_equal(resumed, straight)
    _, direct = memory.search(queries, "image", 4, exclude_groups=groups)
    np.testing.assert_array_equal(straight, direct)


def test_evaluation_items_are_left_out_of_a_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images, texts = unit(rng.standard_normal((100, DIM))), unit(rng.standard_normal((100, DIM)))
    evaluation = {"image": images[:5] + 1e-4, "text": unit(rng.standard_normal((3, DIM)))}
    items = [MemoryItem(f"m{i}", "", group=f"m{i}") for i in range(100)]
    memory = Memory(write_memory(tmp_path / "mem", images, texts, items, BuildOptions(index="flat",
                                                                                      exclude=evaluation)))
    assert len(memory) == 95 and memory.ids[0] == "m5"
    assert memory.manifest["removed_near_evaluation_items"] == 5


def test_neighbours_are_the_same_at_any_thread_count_and_ties_go_to_the_lowest_row(tmp_path: Path) -> None:
    """Hundreds of identical label copies: which copies an index keeps among equal scores changed with its
    thread count; ranked by score, then row, and searched past a tie at the cut, the neighbours and scores are
    the same at 1 and 2 threads, and the tie goes to the lowest rows."""
    import faiss

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, 3000)
    base = unit(rng.standard_normal((20, DIM)))
    items = [MemoryItem(f"m{i}", f"label {c}", group=f"m{i}") for i, c in enumerate(labels)]
    memory = Memory(write_memory(tmp_path / "mem", unit(base[labels] + 0.3 * rng.standard_normal((3000, DIM))),
                                 base[labels], items, BuildOptions(index="flat")))
    queries = unit(base + 0.01 * rng.standard_normal((20, DIM)))
    found = {}
    threads = faiss.omp_get_max_threads()
    try:
        for count in (1, 2):
            faiss.omp_set_num_threads(count)
            found[count] = memory.search(queries, "text", 16)
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(found[1][1], found[2][1]) and np.array_equal(found[1][0], found[2][0])
    for query, rows in enumerate(found[1][1]):
        assert list(rows) == list(np.flatnonzero(labels == query)[:16])        # all tied: the lowest rows


def test_concepts_are_held_out_whole_by_size_in_two_halves(tmp_path: Path) -> None:
    """Labels when there are labels, else clusters of the frozen text embeddings with a group's rows together;
    frequent concepts are held out as often as their share (not mostly rare ones); select and decide apart."""
    from hierarcaps.reco.holdouts import concept_of_rows, concept_splits

    rng = np.random.default_rng(0)
    sizes = (np.arange(1, 41) ** 1.5).astype(int)                  # 40 concepts, a long tail
    labels = np.repeat(np.arange(40), sizes)
    text = unit(rng.standard_normal((40, DIM)))[labels] + 0.01 * rng.standard_normal((len(labels), DIM))
    groups = [f"g{i // 2}" for i in range(len(labels))]
    for given in ([f"c{c}" for c in labels], None):
        parts = concept_splits(text, groups, given, 0.3, seed=1)
        concept = concept_of_rows(text, groups, given, None, 1)
        assert all(concept[i] == concept[i - i % 2] for i in range(len(labels)))     # a group stays whole
        seen = {concept[i] for i in parts.train}
        held = [{concept[i] for i in part} for part in (parts.select, parts.decide)]
        assert held[0] and held[1] and not held[0] & held[1] and not (held[0] | held[1]) & seen
        assert {groups[i] for i in parts.in_distribution} .isdisjoint({groups[i] for i in parts.train})
        assert 0.2 < (len(parts.select) + len(parts.decide)) / len(labels) < 0.45
    labelled = concept_splits(text, groups, [f"c{c}" for c in labels], 0.3, seed=1)
    drawn = {int(labels[i]) for i in (*labelled.select, *labelled.decide)}
    assert np.mean(sizes[list(drawn)]) > np.mean(sizes)            # by size: frequent concepts are drawn


def test_a_learned_fusion_starts_as_the_best_training_free_option(tmp_path: Path) -> None:
    """Step 0 of the learned fusion scores exactly what the best training-free option scores on select."""
    pairs = clustered_memory(tmp_path / "mem", 4, 12, 20)
    trainer = RecoTrainer(RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "run"), k=4, heads=2, steps=0,
                                     holdout="group", val_fraction=0.4, progress=False), pairs)
    best = trainer.best_free
    assert trainer.evaluate()["val_accuracy"] == trainer.free_select[best]
    assert np.array_equal(trainer.correct(None, "decide"), trainer.correct(trainer.option_modules(trainer.free[best]),
                                                                           "decide"))


def test_auto_keeps_the_training_free_option_when_the_learned_fusion_only_memorised_seen_concepts(
        tmp_path: Path) -> None:
    """Neighbours that say nothing (a memory of noise) and concepts the fusion can only memorise: it wins on the
    concepts it trained on, not on unseen ones, so auto keeps the training-free option and says so."""
    import json

    rng = np.random.default_rng(5)
    concepts, per = 40, 25
    u, v = unit(rng.standard_normal((concepts, DIM))), unit(rng.standard_normal((concepts, DIM)))
    labels = np.repeat(np.arange(concepts), per)
    images = unit(u[labels] + 0.3 * rng.standard_normal((len(labels), DIM)))
    items = [MemoryItem(f"m{i}", "", group=f"m{i}") for i in range(400)]
    write_memory(tmp_path / "mem", unit(rng.standard_normal((400, DIM))), unit(rng.standard_normal((400, DIM))),
                 items, BuildOptions(index="flat"))
    pairs = Pairs(images, v[labels].copy(), [f"g{i}" for i in range(len(labels))], keys=[f"c{c}" for c in labels],
                  labels=[f"c{c}" for c in labels])
    config = RecoConfig(memory=str(tmp_path / "mem"), out=str(tmp_path / "reco"), learned="transformer", k=4,
                        heads=2, steps=300, eval_every=50, batch_size=64, lr=3e-3, sides="image", val_fraction=0.3,
                        keep="last", patience=None, progress=False)
    trainer = RecoTrainer(config, pairs)
    trainer.train()
    selection = json.loads((tmp_path / "reco" / "reco.json").read_text())["selection"]
    seen, unseen = selection["scores"]["learned"]["in_distribution"], selection["scores"]["learned"]["decide"]
    assert seen > selection["scores"][selection["best_free"]]["in_distribution"] + 0.3   # it learned seen concepts
    assert selection["learned_minus_best_free"]["interval"][0] <= 0 < 0.3 + unseen          # not unseen ones
    assert selection["used"] != "transformer" and "no clear win" in selection["why"]


def test_labels_naming_a_scored_class_in_other_words_are_found() -> None:
    """A plural, a case or spacing variant and a synonym (cosine at the threshold) name the scored class; a label
    just under the threshold and a different class do not."""
    from hierarcaps.reco.labels import near_duplicates, singular_key

    angle = np.arccos(0.85)
    vectors = {
        "transport": np.array([1.0, 0.0, 0.0]),
        "Transports ": np.array([0.0, 0.0, 1.0]),                       # same key once plural: caught by the key
        "berries": np.array([0.0, 1.0, 0.0]),
        "berry": np.array([0.0, 0.0, 1.0]),                             # scored as the singular
        "transportation": 2.0 * np.array([np.cos(angle), np.sin(angle), 0.0]),     # cosine 0.85: caught
        "vehicle": np.array([np.cos(angle + 1e-3), np.sin(angle + 1e-3), 0.0]),    # just under: kept
        "cat": np.array([0.0, 0.6, 0.8]),
    }
    assert singular_key("Berries ") == "berry" and singular_key("bus") == "bus"
    found = near_duplicates(list(vectors), ["transport", "berry"], vectors)
    assert found == {"transport", "Transports ", "berries", "berry", "transportation"}
    assert near_duplicates(list(vectors), ["transport"], vectors, threshold=0.99) == {"transport", "Transports "}
