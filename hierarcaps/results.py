"""The result document, typed: what `evaluate` and the leaderboard write and what `report` reads.

Its JSON form is published as ``hierarcaps/schemas/result.schema.json`` (``schema_path()``); a document of an
older schema either upgrades (version 1 lacked ``main_score``) or fails with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import HierarcapsError
from .metrics.catalogue import main_score_of

SCHEMA_VERSION = 2
REQUIRED = ("model", "protocol", "dataset", "metrics")


@dataclasses.dataclass
class Result:
    """One scored run: a model on a split under a protocol."""

    model: dict[str, Any]
    protocol: dict[str, Any]
    dataset: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    package: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "hierarcaps", "version": "unknown"})
    main_score: dict[str, Any] = dataclasses.field(default_factory=dict)
    baselines: dict[str, dict[str, dict[str, Any]]] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)   # environment, timings, created, ...
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.main_score:
            self.main_score = main_score_of(str(self.protocol.get("name", "")), self.metrics)

    def to_dict(self) -> dict[str, Any]:
        document = {"schema_version": self.schema_version, "model": self.model, "protocol": self.protocol,
                    "dataset": self.dataset, "package": self.package, **self.extra,
                    "main_score": self.main_score, "metrics": self.metrics}
        if self.baselines is not None:
            document["baselines"] = self.baselines
        return document

    @classmethod
    def from_dict(cls, document: Any, where: str = "result") -> Result:
        """A result from its JSON form (any schema version this package knows), or HierarcapsError saying why not."""
        if not isinstance(document, dict):
            raise HierarcapsError(f"{where}: not a hierarcaps result (not a JSON object)")
        missing = [key for key in REQUIRED if not isinstance(document.get(key), dict)]
        if missing:
            raise HierarcapsError(f"{where}: not a hierarcaps result (no {', '.join(missing)})")
        version = document.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise HierarcapsError(f"{where}: result schema {version!r} is newer than this package's "
                                  f"({SCHEMA_VERSION}); upgrade hierarcaps")
        problem = metrics_problem(document["metrics"])
        if problem:
            raise HierarcapsError(f"{where}: metrics {problem}")
        baselines = document.get("baselines")
        if baselines is not None:
            if not isinstance(baselines, dict):
                raise HierarcapsError(f"{where}: baselines must be an object")
            for name, block in baselines.items():
                if (problem := metrics_problem(block)) is not None:
                    raise HierarcapsError(f"{where}: baseline {str(name)[:40]!r} {problem}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "schema_version"}
        return cls(**{k: document[k] for k in known if k in document},
                   extra={k: v for k, v in document.items() if k not in known and k != "schema_version"})


def metrics_problem(metrics: Any) -> str | None:
    """Why a metrics block is malformed (each metric needs a finite value and a two-number CI), or None."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(metrics, dict):
        return "must be an object"
    for name, entry in metrics.items():
        ci = entry.get("ci95") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and number(entry.get("value")) and isinstance(ci, list) and len(ci) == 2
                and all(number(x) for x in ci)):
            return f"{str(name)[:40]!r} needs a finite value and ci95 [low, high]"
    return None


def schema_path() -> Path:
    """The published JSON schema of a result document."""
    return Path(str(resources.files("hierarcaps") / "schemas" / "result.schema.json"))
