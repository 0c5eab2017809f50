"""The result document, typed and declared once: what `evaluate` and the leaderboard write and `report` reads.

Its sections are dataclasses; :meth:`Result.scored` is the one constructor the harness and the board both call;
:func:`schema` derives the JSON schema from the dataclasses (published as ``hierarcaps/schemas/
result.schema.json``, a test keeps the file equal to it), and :meth:`Result.from_dict` applies that schema to
every document it reads, so a result is checked by one validator wherever it comes from. A document of an
older schema either upgrades (version 1 lacked ``main_score``) or fails with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import HierarcapsError
from .metrics.catalogue import main_score_of

SCHEMA_VERSION = 2
MAX_RESULT_BYTES = 4 * 2**20
"""A result file (a board reads every entry's at each build); larger ones are refused before reading."""
SCHEMA_ID = "https://hierarcaps.dev/schemas/result.schema.json"


def meta(description: str = "", **constraints: Any) -> dict[str, Any]:
    """A field's schema extras: its ``description`` and JSON-schema ``constraints`` (minimum, ...)."""
    return {"description": description, **constraints}


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: the mean over units and its percentile bootstrap CI."""

    value: float
    ci95: list[float] = dataclasses.field(metadata=meta("[low, high]", minItems=2, maxItems=2))
    n: int | None = dataclasses.field(default=None, metadata=meta("units averaged", minimum=1))


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Who was scored. Adapters and submissions add their own keys (licence, link, training data, ...)."""

    name: str = dataclasses.field(metadata=meta("never a filesystem path", minLength=1))
    revision: str | None = None
    fingerprint: str | None = dataclasses.field(
        default=None, metadata=meta("the weights fingerprint, one identity however the model was loaded"))
    parameters: int | None = dataclasses.field(default=None, metadata=meta(minimum=0))
    dim: int | None = dataclasses.field(default=None, metadata=meta(minimum=1))
    modalities: list[Literal["text", "image"]] | None = None
    root_text: str | None = None
    own_geometry: bool | None = None


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """How the CIs were drawn: seeded percentile bootstrap over the units each metric averages."""

    resamples: int = dataclasses.field(metadata=meta(minimum=1))
    seed: int
    level: float


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How the scores were computed (hierarcaps-v1: 50 radius thresholds, the empty text as the root)."""

    name: str
    steps: int = dataclasses.field(metadata=meta("radius thresholds", minimum=1))
    root_text: str
    bootstrap: Bootstrap | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What was scored: the split or file, its rows, its content checksum, and the pixels of its images."""

    split: str
    rows: int = dataclasses.field(metadata=meta(minimum=0))
    checksum: str
    images: int | None = dataclasses.field(default=None, metadata=meta(minimum=0))
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

    model: dict[str, Any]
    protocol: Protocol
    dataset: Dataset
    metrics: dict[str, dict[str, Any]]
    package: Package = dataclasses.field(default_factory=lambda: Package("hierarcaps", "unknown"))
    main_score: MainScore | None = None
    baselines: dict[str, dict[str, dict[str, Any]]] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)   # environment, timings, created, ...
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.main_score is None:
            self.main_score = MainScore(**main_score_of(self.protocol.name, self.metrics))

    @classmethod
    def scored(cls, model: dict[str, Any], metrics: dict[str, dict[str, Any]], dataset: Dataset, *, steps: int,
               root_text: str, resamples: int, seed: int, level: float, version: str,
               baselines: dict[str, dict[str, dict[str, Any]]] | None = None,
               extra: dict[str, Any] | None = None) -> Result:
        """The one constructor of a fresh result, for the harness and the board alike."""
        from .metrics.hierarchy import PROTOCOL

        protocol = Protocol(PROTOCOL, steps, root_text, Bootstrap(resamples, seed, level))
        return cls(model=model, protocol=protocol, dataset=dataset, metrics=metrics,
                   package=Package("hierarcaps", version), baselines=baselines, extra=dict(extra or {}))

    def to_dict(self) -> dict[str, Any]:
        document = {"schema_version": self.schema_version, "model": self.model,
                    "protocol": _plain(self.protocol), "dataset": _plain(self.dataset),
                    "package": _plain(self.package), **self.extra,
                    "main_score": _plain(self.main_score), "metrics": self.metrics}
        if self.baselines is not None:
            document["baselines"] = self.baselines
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
        return cls(model=upgraded["model"], protocol=_typed(Protocol, upgraded["protocol"]),
                   dataset=_typed(Dataset, upgraded["dataset"]), metrics=upgraded["metrics"],
                   package=_typed(Package, upgraded["package"]), main_score=_typed(MainScore, upgraded["main_score"]),
                   baselines=upgraded.get("baselines"),
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


def _plain(section: Any) -> dict[str, Any]:
    """A section's JSON object: its fields, optional ones left None omitted."""
    if section is None:
        return {}
    optional = {f.name for f in dataclasses.fields(section) if f.default is None}
    return {f.name: _plain(value) if dataclasses.is_dataclass(value) else value
            for f in dataclasses.fields(section)
            if not ((value := getattr(section, f.name)) is None and f.name in optional)}


def _typed(cls: type, values: dict[str, Any]) -> Any:
    """A section from its (validated) JSON object; keys it does not declare are kept nowhere (the schema allows
    them only where the section is open)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in values.items() if k in names}
    if cls is Protocol and isinstance(kwargs.get("bootstrap"), dict):
        kwargs["bootstrap"] = _typed(Bootstrap, kwargs["bootstrap"])
    return cls(**kwargs)


# -- the schema, derived from the dataclasses -----------------------------------------------------------------
OPEN_SECTIONS = (ModelInfo, Protocol, Dataset)
"""Sections that other producers may extend with keys of their own."""


def _type_schema(hint: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(a) for a in args if a is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        if type(None) in args:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])}
    if dataclasses.is_dataclass(hint):
        return {"$ref": f"#/$defs/{hint.__name__}"}
    return {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
            bool: {"type": "boolean"}}.get(hint, {})


def _section_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        prop = _type_schema(hints[f.name])
        constraints = {k: v for k, v in f.metadata.items() if k != "description"}
        if constraints:                       # the constraints hold for the value, not for null
            if "anyOf" in prop and prop["anyOf"][-1] == {"type": "null"}:
                prop = {"anyOf": [{**prop["anyOf"][0], **constraints}, {"type": "null"}]}
            else:
                prop = {**prop, **constraints}
        if f.metadata.get("description"):
            prop = {**prop, "description": f.metadata["description"]}
        properties[f.name] = prop
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema = {"type": "object", "properties": properties, "required": required}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):        # its own docstring, not the signature
        schema["description"] = " ".join(cls.__doc__.split())
    if cls not in OPEN_SECTIONS:
        schema["additionalProperties"] = False
    return schema


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
        "$defs": {cls.__name__: _section_schema(cls) for cls in sections},
    }


TYPE_WORDS = {"string": "a string", "boolean": "true or false", "integer": "an integer", "number": "a finite number",
              "array": "a list", "object": "an object", "null": "null"}


def schema_problem(value: Any, node: dict[str, Any], root: dict[str, Any] | None = None, where: str = "") -> str | None:
    """The first way ``value`` breaks ``node`` (the subset of JSON schema :func:`schema` uses; numbers must be
    finite), as one line naming the place; None when it conforms."""
    root = root or node
    at = where or "document"
    if "$ref" in node:
        return schema_problem(value, root["$defs"][node["$ref"].rsplit("/", 1)[-1]], root, where)
    if "anyOf" in node:
        found = [schema_problem(value, option, root, where) for option in node["anyOf"]]
        return None if None in found else found[0]
    if "const" in node and value != node["const"]:
        return f"{at}: must be {node['const']!r}"
    if "enum" in node and value not in node["enum"]:
        return f"{at}: must be one of {', '.join(map(repr, node['enum']))}"
    kind = node.get("type")
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
              "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict),
              "null": lambda v: v is None}
    if kind and not checks[kind](value):
        return f"{at}: must be {TYPE_WORDS[kind]}"
    if kind in ("integer", "number") and "minimum" in node and value < node["minimum"]:
        return f"{at}: must be at least {node['minimum']}"
    if kind == "string" and len(value) < node.get("minLength", 0):
        return f"{at}: must not be empty"
    if kind == "array":
        if not node.get("minItems", 0) <= len(value) <= node.get("maxItems", len(value)):
            return f"{at}: must hold {node.get('minItems')} item(s)"
        return next((p for i, item in enumerate(value)
                     if (p := schema_problem(item, node.get("items", {}), root, f"{at}[{i}]")) is not None), None)
    if kind == "object":
        missing = [key for key in node.get("required", []) if key not in value]
        if missing:
            return f"{at}: missing {', '.join(missing)}"
        properties, extra = node.get("properties", {}), node.get("additionalProperties", True)
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)[:60]
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is None and extra is False:
                return f"{at}: unexpected key {str(key)[:40]!r}"
            if sub is not None and (problem := schema_problem(item, sub, root, name)) is not None:
                return problem
    return None


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
