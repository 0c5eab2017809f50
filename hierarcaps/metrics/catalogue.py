"""What each reported metric is, declared once: label, direction, unit, and each protocol's main score.

Printed tables, the markdown report, the leaderboard's columns and its sort all read this list.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    description: str
    higher_is_better: bool = True
    unit: str = "fraction"


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("precision", "P", "hierarchical retrieval precision (image queries)"),
    MetricInfo("recall", "R", "hierarchical retrieval recall (image queries)"),
    MetricInfo("d_corr", "τ_d", "Kendall's tau between distance to the root and tier", unit="tau"),
    MetricInfo("order_aware_recall", "R_o", "recall of the longest run of predictions in tier order"),
    MetricInfo("f1", "F1", "mean per-image F1 of precision and recall"),
    MetricInfo("i2t_R@1", "I→T R@1", "image to tier-4 caption retrieval, recall at 1"),
    MetricInfo("t2i_R@1", "T→I R@1", "tier-4 caption to image retrieval, recall at 1"),
    MetricInfo("text_query/precision", "TQ P", "hierarchical retrieval precision, tier-4 caption as the query"),
    MetricInfo("text_query/recall", "TQ R", "hierarchical retrieval recall, tier-4 caption as the query"),
)}
def headline() -> tuple[str, ...]:
    """The metrics every table and the board show, in declaration order (read at call time, so a metric
    declared in ``METRICS`` appears everywhere at once)."""
    return tuple(METRICS)


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
