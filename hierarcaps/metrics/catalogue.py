"""What each reported metric is, declared once: label, direction, unit, and each protocol's main score.

Printed tables, the markdown report, the leaderboard's columns and its sort all read this list.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .retrieval import DEFAULT_KS


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """One reported metric. Every metric a result can hold is described here; ``column`` says whether the
    printed table and the board show it by default (being described and being a column are separate)."""

    name: str
    label: str
    description: str
    higher_is_better: bool = True
    unit: str = "fraction"
    column: bool = True


TIERS = 4
"""The protocol's tiers (tier recall metrics are declared for each)."""


def _chain_metrics(prefix: str, label: str, queries: str, columns: tuple[str, ...]) -> list[MetricInfo]:
    """The hierarchical-retrieval family of one query kind: precision, recall, order-aware recall, F1, and the
    recall of each tier."""
    family = [("precision", "P", "hierarchical retrieval precision"), ("recall", "R", "hierarchical retrieval recall"),
              ("order_aware_recall", "R_o", "recall of the longest run of predictions in tier order"),
              ("f1", "F1", "mean per-query F1 of precision and recall")]
    family += [(f"recall_tier{k}", f"R@t{k}", f"recall of the tier-{k} caption") for k in range(1, TIERS + 1)]
    return [MetricInfo(prefix + name, f"{label}{short}".strip(), f"{text} ({queries})", column=name in columns)
            for name, short, text in family]


_IMAGE = _chain_metrics("", "", "image queries", ("precision", "recall", "order_aware_recall", "f1"))
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    *_IMAGE[:2],
    MetricInfo("d_corr", "τ_d", "Kendall's tau between distance to the root and tier (a tie counts 0)", unit="tau"),
    *_IMAGE[2:4],
    *(MetricInfo(f"{way}_R@{k}", f"{label} R@{k}", f"{text} retrieval of the tier-4 caption, recall at {k}",
                 column=k == 1)
      for way, label, text in (("i2t", "I→T", "image to caption"), ("t2i", "T→I", "caption to image"))
      for k in DEFAULT_KS),
    *_chain_metrics("text_query/", "TQ ", "tier-4 caption as the query", ("precision", "recall")),
    *_IMAGE[4:],
)}


def headline() -> tuple[str, ...]:
    """The metrics every table and the board show by default, in declaration order (read at call time, so a
    metric declared in ``METRICS`` with ``column=True`` appears everywhere at once)."""
    return tuple(name for name, info in METRICS.items() if info.column)


def label(name: str) -> str:
    return METRICS[name].label if name in METRICS else name


MAIN_SCORE = {"hierarcaps-v1": "d_corr"}
"""The one number a protocol is ranked by (its leaderboard sort, a result's ``main_score``)."""


def main_score(protocol: str) -> MetricInfo:
    return METRICS[MAIN_SCORE.get(protocol, "d_corr")]


def main_score_of(protocol: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The protocol's ranking metric and its value in ``metrics`` (None where the run lacks it)."""
    name = main_score(protocol).name
    return {"name": name, "value": metrics.get(name, {}).get("value")}
