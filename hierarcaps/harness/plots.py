"""Pictures of a run: where each tier sits relative to the root, and predicted chains beside the truth."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..data.images import open_image
from ..metrics.hierarchy import ChainScores
from ..metrics.scoring import EmbeddedBenchmark
from ..plotting import pyplot


def radius_by_tier(bench: EmbeddedBenchmark, path: Path, title: str) -> Path | None:
    """Distribution of the distance to the root for each tier: a model with hierarchy shifts right by tier."""
    if (plt := pyplot(path)) is None:
        return None
    radii = bench.radii
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(radii.min(), radii.max(), 40)
    for k in range(radii.shape[1]):
        ax.hist(radii[:, k], bins=bins, alpha=0.5, label=f"tier {k + 1}")
    ax.set_xlabel("distance to root")
    ax.set_ylabel("texts")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def predicted_chains(bench: EmbeddedBenchmark, chains: ChainScores, image_paths: list[Path], path: Path,
                     count: int = 4, seed: int = 0) -> Path | None:
    """A few images with the chain the model predicts (hits marked) next to the reference chain."""
    if (plt := pyplot(path)) is None:
        return None
    rows_of = bench.image_rows()
    flat = bench.texts.reshape(-1)
    picks = np.random.default_rng(seed).choice(len(image_paths), size=min(count, len(image_paths)), replace=False)
    fig, axes = plt.subplots(len(picks), 2, figsize=(11, 3.2 * len(picks)), squeeze=False)
    for (ax_img, ax_txt), image in zip(axes, picks):
        truth = [str(t) for r in rows_of[image] for t in bench.texts[r]]
        ax_img.imshow(open_image(image_paths[image]))
        ax_img.axis("off")
        predicted = [("✓ " if str(flat[p]) in truth else "✗ ") + str(flat[p]) for p in chains.predictions[image]]
        reference = [str(t) for t in bench.texts[rows_of[image][0]]]
        text = "predicted (generic → specific):\n" + "\n".join(textwrap.shorten(p, 70) for p in predicted)
        text += "\n\nreference:\n" + "\n".join(textwrap.shorten(t, 70) for t in reference)
        ax_txt.text(0, 1, text, va="top", family="DejaVu Sans", fontsize=8.5)
        ax_txt.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
