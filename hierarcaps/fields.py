"""One way to declare a bounded field, one validator, one JSON-schema derivation.

Configs (``configs.check_fields``), the result document (``results``) and the submission file
(``leaderboard.submission``) declare their fields as dataclass fields made by :func:`bounded`; a value is
checked against the declaration by :meth:`Bounds.problem` wherever it comes from (a YAML key, a command-line
option, a JSON document checked through its derived schema), so a bound is written once and worded alike.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a field's value may be beyond its type: a range (``open_low``: strictly above ``low``), choices,
    a text length or a list length. ``description`` documents the field in the JSON schema."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[Any, ...] | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    description: str = ""

    def problem(self, value: Any) -> str | None:
        """The one validator: how ``value`` breaks these bounds, in words; None when it keeps them."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, not {value}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}; not {str(value)[:40]!r}"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self._range_problem(value)
        if isinstance(value, str):
            return self._length_problem(len(value), "character(s)")
        if isinstance(value, list | tuple):
            return self._count_problem(len(value))
        return None

    def _range_problem(self, value: float) -> str | None:
        low, high = self.low, self.high
        below = low is not None and (value <= low if self.open_low else value < low)
        if not below and (high is None or value <= high):
            return None
        bound = (f"above {low}" if self.open_low else f"at least {low}") if low is not None else ""
        bound += (" and " if bound and high is not None else "") + (f"at most {high}" if high is not None else "")
        return f"must be {bound}, not {shown(value)}"

    def _length_problem(self, length: int, unit: str) -> str | None:
        if self.min_length == 1 and length == 0:
            return "must not be empty"
        if self.min_length is not None and length < self.min_length:
            return f"must hold at least {self.min_length} {unit}, not {length}"
        if self.max_length is not None and length > self.max_length:
            return f"over the limit of {self.max_length} {unit} ({length})"
        return None

    def _count_problem(self, count: int) -> str | None:
        if (self.min_items or 0) <= count <= (self.max_items if self.max_items is not None else count):
            return None
        wanted = (f"{self.min_items}" if self.min_items == self.max_items
                  else f"{self.min_items or 0} to {self.max_items if self.max_items is not None else 'any'}")
        return f"must hold {wanted} item(s), not {count}"

    def json_schema(self) -> dict[str, Any]:
        """These bounds as JSON-schema keywords (the published schemas carry them)."""
        keywords = {"exclusiveMinimum" if self.open_low else "minimum": self.low, "maximum": self.high,
                    "enum": list(self.choices) if self.choices is not None else None,
                    "minLength": self.min_length, "maxLength": self.max_length,
                    "minItems": self.min_items, "maxItems": self.max_items}
        return {key: value for key, value in keywords.items() if value is not None}

    @classmethod
    def from_json_schema(cls, node: dict[str, Any]) -> Bounds:
        """The bounds a JSON-schema node states (the inverse of :meth:`json_schema`)."""
        open_low = "exclusiveMinimum" in node
        return cls(low=node.get("exclusiveMinimum", node.get("minimum")), high=node.get("maximum"), open_low=open_low,
                   min_length=node.get("minLength"), max_length=node.get("maxLength"),
                   min_items=node.get("minItems"), max_items=node.get("maxItems"))


def shown(value: Any) -> str:
    """A value for an error line, cut to 40 characters (a number may have hundreds of digits)."""
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bounded(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, description: str = "",
            **bounds: Any) -> Any:
    """A dataclass field with its :class:`Bounds` (``low=``, ``high=``, ``open_low=``, ``choices=``,
    ``min_length=``, ``max_length=``, ``min_items=``, ``max_items=``) and its description."""
    metadata = {"bounds": Bounds(description=description, **bounds)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def bounds_of(field: dataclasses.Field) -> Bounds:
    """A field's declared bounds (none for a plain field)."""
    return field.metadata.get("bounds", Bounds())


# -- JSON schema from the dataclasses, and the check of a document against it ------------------------------
def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint (sections by reference to ``#/$defs/<class>``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in args if a is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        if type(None) in args:
            schema = {"anyOf": [schema, {"type": "null"}]}
        return schema
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1])}
    if dataclasses.is_dataclass(hint):
        return {"$ref": f"#/$defs/{hint.__name__}"}
    return {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
            bool: {"type": "boolean"}}.get(hint, {})


def section_schema(cls: type, open_section: bool) -> dict[str, Any]:
    """A dataclass as a JSON-schema object: its fields' types and bounds, required where there is no default;
    ``open_section``: other producers may add keys of their own."""
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        if f.metadata.get("rest"):                  # a catch-all for other producers' keys: the section is open
            continue
        prop = type_schema(hints[f.name])
        bounds = bounds_of(f)
        if keywords := bounds.json_schema():       # the bounds hold for the value, not for null
            if "anyOf" in prop and prop["anyOf"][-1] == {"type": "null"}:
                prop = {"anyOf": [{**prop["anyOf"][0], **keywords}, {"type": "null"}]}
            else:
                prop = {**prop, **keywords}
        if bounds.description:
            prop = {**prop, "description": bounds.description}
        properties[f.name] = prop
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    schema = {"type": "object", "properties": properties, "required": required}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):        # its own docstring, not the signature
        schema["description"] = " ".join(cls.__doc__.split())
    if not open_section:
        schema["additionalProperties"] = False
    return schema


TYPE_WORDS = {"string": "a string", "boolean": "true or false", "integer": "an integer", "number": "a finite number",
              "array": "a list", "object": "an object", "null": "null"}
TYPE_CHECKS = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
               "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
               "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
               "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict),
               "null": lambda v: v is None}


def schema_problem(value: Any, node: dict[str, Any], root: dict[str, Any] | None = None, where: str = "") -> str | None:
    """The first way ``value`` breaks ``node`` (see :func:`schema_problems`); None when it conforms."""
    return next(schema_problems(value, node, root, where), None)


def schema_problems(value: Any, node: dict[str, Any], root: dict[str, Any] | None = None,
                    where: str = "") -> Iterator[str]:
    """Every way ``value`` breaks ``node`` (the subset of JSON schema :func:`section_schema` writes; numbers must
    be finite; bounds checked by :meth:`Bounds.problem`), one line each naming the place."""
    root = root or node
    at = where or "document"
    if "$ref" in node:
        yield from schema_problems(value, root["$defs"][node["$ref"].rsplit("/", 1)[-1]], root, where)
        return
    if "anyOf" in node:
        found = [next(schema_problems(value, option, root, where), None) for option in node["anyOf"]]
        if None not in found:
            yield found[0]
        return
    if "const" in node and value != node["const"]:
        yield f"{at}: must be {node['const']!r}"
        return
    if "enum" in node and value not in node["enum"]:
        yield f"{at}: must be one of {', '.join(map(repr, node['enum']))}"
        return
    kind = node.get("type")
    if kind and not TYPE_CHECKS[kind](value):
        yield f"{at}: must be {TYPE_WORDS[kind]}"
        return
    if kind and (problem := Bounds.from_json_schema(node).problem(value)) is not None:
        yield f"{at}: {problem}"
        return
    if kind == "array":
        for i, item in enumerate(value):
            yield from schema_problems(item, node.get("items", {}), root, f"{at}[{i}]")
    if kind == "object":
        if missing := [key for key in node.get("required", []) if key not in value]:
            yield f"{at}: missing {', '.join(missing)}"
        properties, extra = node.get("properties", {}), node.get("additionalProperties", True)
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)[:60]
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is None and extra is False:
                yield f"{at}: unexpected key {str(key)[:40]!r}"
            elif sub is not None:
                yield from schema_problems(item, sub, root, name)
