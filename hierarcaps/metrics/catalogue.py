"""Every reported metric, declared once: its name, label, description, direction, unit, whether tables show it,
and how it is computed from a benchmark's per-unit values. The scorer computes what this list declares, and
printed tables, the markdown report, the leaderboard's columns and its sort all read it: adding a metric is
one declaration (and, for a board, ``hierarcaps leaderboard rescore``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..data.records import TIERS
from .hierarchy import kendall_tau_rows
from .retrieval import DEFAULT_KS

if TYPE_CHECKING:
    import numpy as np

    from .units import Units



@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """One reported metric: what it is, and ``compute``, its per-unit values (per image, row or query) from a
    benchmark's :class:`~hierarcaps.metrics.units.Units`, or None where it does not apply (image metrics of a
    text-only model). ``column``: whether the printed table and the board show it by default."""

    name: str
    label: str
    description: str
    compute: Callable[[Units], np.ndarray | None]
    higher_is_better: bool = True
    unit: str = "fraction"
    column: bool = True


def _chain_metrics(prefix: str, label: str, queries: str, columns: tuple[str, ...],
                   chains: Callable[[Units], Any]) -> list[MetricInfo]:
    """The hierarchical-retrieval family of one query kind: precision, recall, order-aware recall, F1, and the
    recall of each tier, read from that kind's chain scores (``chains``)."""
    def field(name: str) -> Callable[[Units], np.ndarray | None]:
        return lambda units: getattr(chains(units), name) if chains(units) is not None else None

    def tier(k: int) -> Callable[[Units], np.ndarray | None]:
        return lambda units: chains(units).recall_per_tier[:, k - 1] if chains(units) is not None else None

    family = [("precision", "P", "hierarchical retrieval precision", field("precision")),
              ("recall", "R", "hierarchical retrieval recall", field("recall")),
              ("order_aware_recall", "R_o", "recall of the longest run of predictions in tier order",
               field("order_aware_recall")),
              ("f1", "F1", "mean per-query F1 of precision and recall", field("f1"))]
    family += [(f"recall_tier{k}", f"R@t{k}", f"recall of the tier-{k} caption", tier(k)) for k in range(1, TIERS + 1)]
    return [MetricInfo(prefix + name, f"{label}{short}".strip(), f"{text} ({queries})", compute,
                       column=name in columns) for name, short, text, compute in family]


def _retrieval(way: str, k: int) -> Callable[[Units], np.ndarray | None]:
    return lambda units: units.retrieval[way][k] if units.retrieval is not None else None


_IMAGE = _chain_metrics("", "", "image queries", ("precision", "recall", "order_aware_recall", "f1"),
                        lambda units: units.image_chains)
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    *_IMAGE[:2],
    MetricInfo("d_corr", "τ_d", "Kendall's tau between distance to the root and tier (a tie counts 0)",
               lambda units: kendall_tau_rows(units.radii), unit="tau"),
    *_IMAGE[2:4],
    *(MetricInfo(f"{way}_R@{k}", f"{label} R@{k}", f"{text} retrieval of the tier-4 caption, recall at {k}",
                 _retrieval(way, k), column=k == 1)
      for way, label, text in (("i2t", "I→T", "image to caption"), ("t2i", "T→I", "caption to image"))
      for k in DEFAULT_KS),
    *_chain_metrics("text_query/", "TQ ", "tier-4 caption as the query", ("precision", "recall"),
                    lambda units: units.text_query_chains),
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
