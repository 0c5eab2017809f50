"""CLI subcommand ``models``: the adapters a ``--model`` spec can name."""

from __future__ import annotations

import argparse

from ..subcommand import Command, echo


def _models(args: argparse.Namespace) -> int:
    from .registry import DEFAULT_MODEL, adapters, described

    listed = [(a, *described(a)) for a in adapters()]
    rows = [(DEFAULT_MODEL, "the packaged all-MiniLM-L6-v2 (offline)", "hierarcaps"),
            *((f"{a.prefix}..." + (f"  e.g. {example}" if example else ""), description, a.origin)
              for a, description, example in listed),
            ("org/name", "a hub id: transformers dual encoder", "hierarcaps"),
            ("FOLDER", "a local model folder, detected from its files", "hierarcaps")]
    width = max(len(r[0]) for r in rows)
    for spec, description, origin in rows:
        echo(f"{spec.ljust(width)}  {description}" + (f"  [{origin}]" if origin != "hierarcaps" else ""))
    return 0


COMMANDS = (
    Command("models", "list the model adapters: spec prefixes of the package and of installed plugins",
            lambda p: None, _models),
)
