"""RECO: memory and search, and proof that trained fusion learns what the frozen embedding lacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hierarcaps.errors import HierarcapsError
from hierarcaps.reco.encoder import refine
from hierarcaps.reco.memory import Memory, MemoryItem, write_memory
from hierarcaps.reco.train import RecoConfig, RecoTrainer

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
        return Memory(write_memory(folder, self.images(classes), text, items, index="flat"))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_search_excludes_the_query_itself_and_near_duplicates(world: World, tmp_path: Path) -> None:
    memory = world.memory(tmp_path / "mem", per_class=2)
    queries = np.asarray(memory.vectors["image"][:5])
    _, rows = memory.search(queries, "image", 4)
    assert not (rows == np.arange(5)[:, None]).any()              # identical vectors sit above the threshold
    _, rows = memory.search(queries, "image", 4, exclude_ids=["m0", "m1", "m2", "m3", "m4"],
                            duplicate_threshold=1.1)
    assert not (rows == np.arange(5)[:, None]).any()              # excluded by id, threshold off
    neighbours = memory.neighbours(queries, "image", 4)
    assert neighbours.shape == (5, 4, DIM)
    np.testing.assert_array_equal(neighbours[0, 0], memory.vectors["text"][rows[0, 0]])
    with pytest.raises(HierarcapsError, match="fewer than k"):
        memory.search(queries, "image", 700)
    assert memory.stats()["items"] == 640


ACCURACY: dict[str, float] = {}


@pytest.mark.parametrize("kind", ["transformer", "mean", "mlp"])
def test_only_trained_transformer_fusion_beats_the_frozen_embedding(kind: str, world: World, tmp_path: Path) -> None:
    memory_folder = tmp_path / "mem"
    memory = world.memory(memory_folder)
    unseen = np.arange(CLASSES - BLOCK, CLASSES)                  # the last block: never seen in training
    train_classes = world.rng.integers(0, CLASSES - BLOCK, 3000)
    trainer = RecoTrainer(RecoConfig(memory=str(memory_folder), out=str(tmp_path / kind), fusion=kind, heads=4, k=8,
                                     sides="image", steps=0 if kind == "mean" else 800, batch_size=128, lr=2e-3,
                                     val_every=200, progress=False),
                          world.images(train_classes), world.texts(train_classes), [None] * len(train_classes))
    trainer.train()
    test_classes = world.rng.choice(unseen, 500)
    queries = world.images(test_classes)
    candidates = world.v[unseen]
    frozen = float((np.argmax(queries @ candidates.T, axis=1) == test_classes - unseen[0]).mean())
    refined = refine(dict(trainer.modules), memory, queries, "image", 8)
    accuracy = float((np.argmax(refined @ candidates.T, axis=1) == test_classes - unseen[0]).mean())
    assert frozen < 0.15                                          # chance is 0.05
    ACCURACY[kind] = accuracy
    if kind == "transformer":
        assert accuracy > frozen + 0.4, (frozen, accuracy)
    elif kind == "mean":
        assert accuracy < frozen + 0.1, (frozen, accuracy)
    else:                                                         # the equal-size MLP control: clearly behind
        assert accuracy < ACCURACY["transformer"] - 0.2, (frozen, accuracy, ACCURACY)
