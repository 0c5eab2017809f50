"""Hierarchy and retrieval metrics as pure functions of embeddings and ids (no model code)."""

from .baselines import all_baselines, length_baselines, random_baseline
from .hierarchy import DEFAULT_ROOT_TEXT, DEFAULT_STEPS, PROTOCOL, kendall_tau_rows, radii
from .scoring import EmbeddedBenchmark, per_unit_metrics, score

__all__ = [
    "DEFAULT_ROOT_TEXT", "DEFAULT_STEPS", "PROTOCOL", "EmbeddedBenchmark", "all_baselines", "kendall_tau_rows",
    "length_baselines", "per_unit_metrics", "radii", "random_baseline", "score",
]
