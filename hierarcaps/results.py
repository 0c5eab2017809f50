"""The result document, typed and declared once: what `evaluate` and the leaderboard write and `report` reads.

Its sections are dataclasses; :meth:`Result.scored` is the one constructor the harness and the board both call;
:func:`schema` derives the JSON schema from the dataclasses (published as ``hierarcaps/schemas/
result.schema.json``, a test keeps the file equal to it), and :meth:`Result.from_dict` applies that schema to
every document it reads, so a result is checked by one validator wherever it comes from. A document of an
older schema either upgrades (version 1 lacked ``main_score``) or fails with a one-line reason.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import HierarcapsError
from .fields import bounded, schema_problem, section_schema
from .metrics.catalogue import main_score, main_score_of

SCHEMA_VERSION = 2
MAX_RESULT_BYTES = 4 * 2**20
"""A result file (a board reads every entry's at each build); larger ones are refused before reading."""
MAX_PARAMETERS = 10**13
"""Parameter counts are 0 (unknown) up to this bound."""
MAX_TEXT_CHARS = 2000
"""A model's licence, link or training-data text, in a submission and in a stored result alike."""
SCHEMA_ID = "https://hierarcaps.dev/schemas/result.schema.json"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: the mean over units and its percentile bootstrap CI."""

    value: float
    ci95: list[float] = bounded(description="[low, high]", min_items=2, max_items=2)
    n: int | None = bounded(None, description="units averaged", low=1)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Who was scored. Adapters may add keys of their own (a RECO model's base and memory size, ...)."""

    name: str = bounded(description="never a filesystem path", min_length=1)
    revision: str | None = None
    fingerprint: str | None = bounded(
        None, description="the weights fingerprint, one identity however the model was loaded")
    parameters: int | None = bounded(None, description="0 when unknown", low=0, high=MAX_PARAMETERS)
    dim: int | None = bounded(None, low=1)
    modalities: list[Literal["text", "image"]] | None = None
    root_text: str | None = None
    own_geometry: bool | None = None
    licence: str | None = bounded(None, max_length=MAX_TEXT_CHARS)
    link: str | None = bounded(None, max_length=MAX_TEXT_CHARS)
    training_data: str | None = bounded(None, max_length=MAX_TEXT_CHARS)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={"rest": True})   # adapters' own keys


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """How the CIs were drawn: seeded percentile bootstrap over the units each metric averages."""

    resamples: int = bounded(low=1)
    seed: int
    level: float


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How the scores were computed (hierarcaps-v1: 50 radius thresholds, the empty text as the root)."""

    name: str
    steps: int = bounded(description="radius thresholds", low=1)
    root_text: str
    bootstrap: Bootstrap | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What was scored: the split or file, its rows, its content checksum, and the pixels of its images."""

    split: str
    rows: int = bounded(low=0)
    checksum: str
    images: int | None = bounded(None, low=0)
    image_recipe: str | None = None


@dataclasses.dataclass(frozen=True)
class Package:
    """The code that scored it."""

    name: Literal["hierarcaps"]
    version: str


@dataclasses.dataclass(frozen=True)
class MainScore:
    """The protocol's ranking metric and its value (null where the run lacks it)."""

    name: str
    value: float | None


@dataclasses.dataclass
class Result:
    """One scored run: a model on a split under a protocol. Reads like its JSON document (``result["metrics"]``)."""

    model: ModelInfo
    protocol: Protocol
    dataset: Dataset
    metrics: dict[str, Metric]
    package: Package = dataclasses.field(default_factory=lambda: Package("hierarcaps", "unknown"))
    main_score: MainScore | None = None
    baselines: dict[str, dict[str, Metric]] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)   # environment, timings, created, ...
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.main_score is None:
            name = main_score(self.protocol.name).name
            self.main_score = MainScore(name, self.metrics[name].value if name in self.metrics else None)

    @classmethod
    def scored(cls, model: dict[str, Any], metrics: dict[str, dict[str, Any]], dataset: Dataset, *, steps: int,
               root_text: str, resamples: int, seed: int, level: float, version: str,
               baselines: dict[str, dict[str, dict[str, Any]]] | None = None,
               extra: dict[str, Any] | None = None) -> Result:
        """The one constructor of a fresh result, for the harness and the board alike: the producers' model
        metadata and metric summaries (plain mappings) become the typed sections."""
        from .metrics.hierarchy import PROTOCOL

        protocol = Protocol(PROTOCOL, steps, root_text, Bootstrap(resamples, seed, level))
        return cls(model=_typed(ModelInfo, model), protocol=protocol, dataset=dataset, metrics=metric_table(metrics),
                   package=Package("hierarcaps", version),
                   baselines=None if baselines is None else {k: metric_table(v) for k, v in baselines.items()},
                   extra=dict(extra or {}))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (what ``evaluate`` writes, the board stores and ``report`` reads)."""
        document = {"schema_version": self.schema_version, "model": plain(self.model),
                    "protocol": plain(self.protocol), "dataset": plain(self.dataset),
                    "package": plain(self.package), **self.extra,
                    "main_score": plain(self.main_score), "metrics": plain_table(self.metrics)}
        if self.baselines is not None:
            document["baselines"] = {name: plain_table(table) for name, table in self.baselines.items()}
        return document

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    @classmethod
    def from_dict(cls, document: Any, where: str = "result") -> Result:
        """A result from its JSON form (any schema version this package knows), checked against :func:`schema`;
        else a HierarcapsError saying, in one line, what is wrong and where."""
        if not isinstance(document, dict):
            raise HierarcapsError(f"{where}: not a hierarcaps result (not a JSON object)")
        missing = [key for key in ("model", "protocol", "dataset", "metrics") if not isinstance(document.get(key),
                                                                                              dict)]
        if missing:
            raise HierarcapsError(f"{where}: not a hierarcaps result (no {', '.join(missing)})")
        version = document.get("schema_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
            raise HierarcapsError(f"{where}: result schema {str(version)[:20]!r} is newer than this package's "
                                  f"({SCHEMA_VERSION}); upgrade hierarcaps")
        upgraded = {**document, "schema_version": SCHEMA_VERSION}
        protocol = upgraded["protocol"]
        upgraded.setdefault("main_score", main_score_of(str(protocol.get("name", "")), upgraded["metrics"]))
        upgraded.setdefault("package", {"name": "hierarcaps", "version": "unknown"})
        if version == 1:                                   # version 1 left these implied
            upgraded["protocol"] = {"steps": 50, "root_text": "", **protocol}
            upgraded["dataset"] = {"checksum": "unknown", **upgraded["dataset"]}
        if (problem := schema_problem(upgraded, schema())) is not None:
            raise HierarcapsError(f"{where}: {problem}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "schema_version"}
        baselines = upgraded.get("baselines")
        return cls(model=_typed(ModelInfo, upgraded["model"]), protocol=_typed(Protocol, upgraded["protocol"]),
                   dataset=_typed(Dataset, upgraded["dataset"]), metrics=metric_table(upgraded["metrics"]),
                   package=_typed(Package, upgraded["package"]), main_score=_typed(MainScore, upgraded["main_score"]),
                   baselines=None if baselines is None else {k: metric_table(v) for k, v in baselines.items()},
                   extra={k: v for k, v in upgraded.items() if k not in known and k != "schema_version"})


def read_result(path: str | Path) -> Result:
    """A result file, read by the one standard for JSON documents (``jsonfile``: bounded, UTF-8 without BOM,
    strict JSON) and checked against the schema; one line saying what is wrong otherwise."""
    from . import jsonfile
    from .errors import DataError

    try:
        document = jsonfile.read(path, limit=MAX_RESULT_BYTES, what="result file")
    except DataError as exc:
        raise HierarcapsError(str(exc)) from None
    return Result.from_dict(document, str(path))


def plain(section: Any) -> dict[str, Any]:
    """A section's JSON object: its fields (optional ones left None omitted), its ``extra`` keys beside them."""
    if section is None:
        return {}
    document: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.metadata.get("rest"):
            document.update(value)
        elif not (value is None and f.default is None):
            document[f.name] = plain(value) if dataclasses.is_dataclass(value) else value
    return document


def plain_table(table: dict[str, Metric]) -> dict[str, dict[str, Any]]:
    """Metrics by name as JSON objects."""
    return {name: plain(metric) for name, metric in table.items()}


def metric_table(table: dict[str, Any]) -> dict[str, Metric]:
    """Metrics by name, typed (from metric summaries or a validated document's objects)."""
    return {name: entry if isinstance(entry, Metric) else _typed(Metric, entry) for name, entry in table.items()}


def _typed(cls: type, values: Any) -> Any:
    """A section from its (validated) JSON object. Keys it does not declare go to its ``extra`` field where it
    has one (the model's), and nowhere otherwise (the schema allows them only where the section is open)."""
    if isinstance(values, cls):
        return values
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields if not f.metadata.get("rest")}
    kwargs = {k: v for k, v in values.items() if k in names}
    if rest := next((f.name for f in fields if f.metadata.get("rest")), None):
        kwargs[rest] = {k: v for k, v in values.items() if k not in names}
    if cls is Protocol and isinstance(kwargs.get("bootstrap"), dict):
        kwargs["bootstrap"] = _typed(Bootstrap, kwargs["bootstrap"])
    return cls(**kwargs)


# -- the schema, derived from the dataclasses -----------------------------------------------------------------
OPEN_SECTIONS = (ModelInfo, Protocol, Dataset)
"""Sections that other producers may extend with keys of their own."""


def schema() -> dict[str, Any]:
    """The JSON schema of a result document, derived from the section dataclasses."""
    sections = (Metric, ModelInfo, Bootstrap, Protocol, Dataset, Package, MainScore)
    metrics = {"type": "object", "additionalProperties": {"$ref": "#/$defs/Metric"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, "title": "hierarcaps result",
        "description": "One scored run: a model on a split under a protocol. Written by `hierarcaps evaluate` and "
                       "by the leaderboard (which scores submitted embeddings with the same code); read by "
                       "`hierarcaps report`. Generated from hierarcaps/results.py.",
        "type": "object",
        "required": ["schema_version", "model", "protocol", "dataset", "metrics", "main_score", "package"],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION}, "model": {"$ref": "#/$defs/ModelInfo"},
            "protocol": {"$ref": "#/$defs/Protocol"}, "dataset": {"$ref": "#/$defs/Dataset"},
            "package": {"$ref": "#/$defs/Package"}, "main_score": {"$ref": "#/$defs/MainScore"},
            "metrics": metrics, "baselines": {"type": "object", "additionalProperties": metrics},
            "environment": {"type": "object"}, "created": {"type": "string"}, "timings": {"type": "object"},
            "text_radii_declared": {"type": "boolean"}, "embeddings_sha256": {"type": "string"},
            "validation_notes": {"type": "array", "items": {"type": "string"}},
        },
        "$defs": {cls.__name__: section_schema(cls, cls in OPEN_SECTIONS) for cls in sections},
    }


def schema_path() -> Path:
    """The published JSON schema of a result document (equal to :func:`schema`)."""
    return Path(str(resources.files("hierarcaps") / "schemas" / "result.schema.json"))


def write_schema() -> Path:
    """Regenerate the published schema file from the types (a test checks that it is current)."""
    import json

    from ._io import atomic_open

    with atomic_open(schema_path()) as handle:
        handle.write(json.dumps(schema(), indent=2, ensure_ascii=False) + "\n")
    return schema_path()
