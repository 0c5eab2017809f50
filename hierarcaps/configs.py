"""Settings a user writes (YAML files, command-line options), read with bounds and checked against typed
dataclasses, so a wrong value ends in one line naming its key instead of a traceback or a silent default.

- Reading: a size limit, no alias bombs (few aliases), bounded nesting, duplicate keys refused.
- Checking (:func:`check_fields`): every field against its type (``int``, ``float``, ``bool``, ``str``, a
  mapping, optional), against the range or choices declared with :func:`hierarcaps.fields.bounded` (the one validator,
  :meth:`~hierarcaps.fields.Bounds.problem`), and NaN refused; unknown
  keys are errors.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

from .errors import DataError
from .fields import bounds_of

MAX_CONFIG_BYTES = 2**20
"""A config file (a full-size one is a few KB)."""
MAX_ALIASES = 64
"""YAML aliases in one file: enough for any config, far too few for a billion-laughs bomb."""
MAX_DEPTH = 32
"""Nesting of YAML collections."""
MAX_NODES = 100_000
"""Values a YAML file may stand for once its aliases are expanded."""


def _loader() -> type:
    """A YAML SafeLoader that counts aliases, bounds nesting and refuses duplicate keys."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.aliases, self.depth = 0, 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (a YAML bomb?)")
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def get_single_node(self) -> Any:
            node = super().get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_NODES:
                raise yaml.YAMLError(f"expands to more than {MAX_NODES} values through its aliases (a YAML bomb?)")
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice (the second would silently win)",
                        key_node.start_mark)
                seen.add(key if isinstance(key, typing.Hashable) else id(key))
            return super().construct_mapping(node, deep=deep)

    return BoundedLoader


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """How many values a composed YAML node stands for once every alias is expanded (each node counted once)."""
    if id(node) not in memo:
        children = node.value if isinstance(node.value, list) else []
        parts = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
        memo[id(node)] = 1 + sum(_expanded_size(part, memo) for part in parts)
    return memo[id(node)]


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping from a file, read within the limits above; one-line errors name the file."""
    import yaml

    from ._io import read_bounded

    file = str(path)
    if not Path(path).exists():
        raise DataError("no such config file", file=file)
    raw = read_bounded(path, MAX_CONFIG_BYTES, what="config file")
    try:
        text = raw.decode("utf-8-sig")
        document = yaml.load(text, Loader=_loader())     # a SafeLoader: no Python objects
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", file=file) from None
    except (yaml.YAMLError, RecursionError, ValueError, OverflowError) as exc:
        raise DataError(f"not valid YAML: {' '.join(str(exc).split())[:300]}", file=file) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise DataError(f"expected a mapping of settings, not {type(document).__name__}", file=file)
    return document


def check_fields(instance: Any, file: str | None = None, section: str = "") -> None:
    """Check every field of a dataclass instance against its type and declared range (converting ints given
    for floats, and numbers YAML read as text, such as ``3e-4``); raise one DataError naming the key."""
    hints = typing.get_type_hints(type(instance))
    for field in dataclasses.fields(instance):
        if dataclasses.is_dataclass(hints[field.name]):
            continue
        where = f"{section}.{field.name}" if section else field.name
        value = _typed(getattr(instance, field.name), hints[field.name], where, file)
        if (problem := bounds_of(field).problem(value)) is not None:
            raise DataError(problem, file=file, field=where)
        object.__setattr__(instance, field.name, value)


def _typed(value: Any, kind: Any, where: str, file: str | None) -> Any:
    """``value`` as ``kind`` (with the few safe conversions), or a DataError."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
        args = typing.get_args(kind)
    origin = typing.get_origin(kind) or kind
    if origin is float and isinstance(value, str):
        value = _number_text(value)
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = {dict: dict, list: list, tuple: (list, tuple)}.get(origin, origin)
    if kind is Any or (isinstance(value, expected) and not (isinstance(value, bool) and origin in (int, float))):
        if origin is dict and args and args[0] is str and not all(isinstance(k, str) for k in value):
            raise DataError("keys must be text", file=file, field=where)
        return value
    shown = "a mapping" if origin is dict else getattr(origin, "__name__", str(origin))
    raise DataError(f"must be {shown}, not {_describe(value)}", file=file, field=where)


def _number_text(value: str) -> Any:
    """A number YAML read as text (it reads ``3e-4`` as a string); other text is left for the type check."""
    try:
        return float(value)
    except ValueError:
        return value


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}" + ("..." if len(text) > 40 else "")


def build_section(cls: type, raw: Any, file: str | None, section: str) -> Any:
    """A checked dataclass from a mapping of settings: unknown keys, keys the class says are set elsewhere
    (``SET_ELSEWHERE``: name -> where), wrong types and out-of-range values are one-line errors naming the key.
    ``None`` (an empty YAML section) gives the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DataError(f"expected a mapping of settings, not {_describe(raw)}", file=file, field=section or None)
    elsewhere: dict[str, str] = getattr(cls, "SET_ELSEWHERE", {})
    known = {f.name for f in dataclasses.fields(cls)} - set(elsewhere)
    for key in raw:
        where = f"{section}.{key}" if section else str(key)
        if key in elsewhere:
            raise DataError(f"not a setting of this section: {elsewhere[key]}", file=file, field=where)
        if key not in known:
            raise DataError(f"unknown setting (known: {', '.join(sorted(known))})", file=file, field=where)
    instance = cls(**raw)
    check_fields(instance, file, section)
    return instance


def check_model_settings(fields: dict[str, Any], config_class: type, where: str, file: str | None = None) -> None:
    """Settings meant for a transformers config class (``BertConfig``, ``T5Config``): every key must be one of
    its settings, of its default's type (such a class keeps unknown keys silently, so a typo would be lost);
    sizes and counts must be positive."""
    defaults = config_class().to_dict()
    for key, value in fields.items():
        if key not in defaults:
            raise DataError(f"not a {config_class.__name__} setting", file=file, field=f"{where}.{key}")
        default = defaults[key]
        numeric = (int, float) if isinstance(default, float) else type(default)
        if default is not None and (not isinstance(value, numeric) or isinstance(value, bool) != isinstance(
                default, bool)):
            raise DataError(f"must be {type(default).__name__} like its default {default!r}, not {_describe(value)}",
                            file=file, field=f"{where}.{key}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1 and isinstance(default, int) \
                and default >= 1:
            raise DataError(f"must be at least 1, not {value}", file=file, field=f"{where}.{key}")


def add_options(parser: Any, cls: type, names: list[str], helps: dict[str, str] | None = None) -> None:
    """Command-line options for dataclass fields (``--batch-size`` for ``batch_size``), typed, with their
    defaults and choices taken from the declaration, so an option and its setting cannot drift apart."""
    import argparse

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        field, kind = fields[name], hints[name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = "--" + name.replace("_", "-")
        text = (helps or {}).get(name, "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        parser.add_argument(flag, type=base, default=default, choices=bounds_of(field).choices, help=text)


def from_options(cls: type, args: Any, **values: Any) -> Any:
    """A dataclass from parsed options (those ``add_options`` made) and ``values``; checked as it is built."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in vars(args).items() if k in names}, **values})
