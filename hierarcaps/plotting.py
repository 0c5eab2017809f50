"""Plots are optional everywhere: one place imports matplotlib, and says in one line which picture it skipped."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np


def pyplot(path: Path) -> Any | None:
    """``matplotlib.pyplot`` (headless) for drawing ``path``, or None with a one-line note when matplotlib is not
    installed, so a run without it still writes every model and result."""
    try:
        import matplotlib
    except ImportError:
        print(f"note: matplotlib is not installed, so {path} was not drawn (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SKIP = {"step", "lr"}


def plot_curves(log: list[dict[str, Any]], path: Path) -> Path | None:
    """Training terms per step (moving average) on the left, held-out values on the right. Plots are optional:
    without matplotlib nothing is drawn, one line says so, and None is returned."""
    if (plt := pyplot(path)) is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    terms = sorted({k for e in log for k in e if k not in SKIP and not k.startswith("val_")})
    for term in terms:
        points = [(e["step"], e[term]) for e in log if term in e]
        steps, values = zip(*points)
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1:], smooth, label=term)
    left.set_xlabel("step")
    left.set_title("training terms (moving average)")
    if terms:
        left.legend()
    val_terms = sorted({k for e in log for k in e if k.startswith("val_")})
    axes = right
    for n, term in enumerate(val_terms):
        points = [(e["step"], e[term]) for e in log if term in e]
        axis = axes if n == 0 else right.twinx()
        axis.plot(*zip(*points), "o-" if n == 0 else "s--", color=f"C{n}", label=term)
        axis.set_ylabel(term)
        axis.legend(loc="upper left" if n == 0 else "upper right")
    right.set_xlabel("step")
    right.set_title("held out")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
