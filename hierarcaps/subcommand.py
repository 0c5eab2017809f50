"""What every subcommand is made of: its declaration (:class:`Command`), argument types and the options several
share (engines; a workshop's own options, such as images, live with it), and output that is safe to print
(:func:`echo`). The bottom of the command layer: workshops declare their commands with it, and ``cli``
registers them."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, what adds its arguments, and what runs it (exit code)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``, or a usage error naming the range."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = "whole number"
    return parse


def engine_options(parser: argparse.ArgumentParser) -> None:
    """Where shard work runs: this process, or a Ray cluster (``pip install 'hierarcaps[distributed]'``)."""
    from .engines import ENGINES

    parser.add_argument("--engine", choices=list(ENGINES), default="local",
                        help="local: this process; ray: Ray Data actor pools (same outputs, resumable by either)")
    parser.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: a local cluster")
    parser.add_argument("--actors", type=int, help="the most actors per stage (default: one per GPU for GPU stages, "
                                                   "else one per --cpus-per-actor CPUs)")
    parser.add_argument("--cpus-per-actor", type=float, help="CPUs each actor reserves (default: 1)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPUs each actor of a GPU stage reserves (default: 1)")


def engine(args: argparse.Namespace) -> Any:
    """The engine that ``engine_options`` describe."""
    from .engines import make_engine

    return make_engine(args.engine, address=args.address, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                       gpus_per_actor=args.gpus_per_actor)
def echo(text: object = "", *, err: bool = False) -> None:
    """Print command output with every character a reader cannot see escaped (newlines kept): output echoes
    ids, names and file names from the user's files, which must not move the cursor or reorder the line."""
    from .textsafe import escape_controls

    lines = str(text).split("\n")
    print("\n".join(escape_controls(line) for line in lines), file=sys.stderr if err else sys.stdout, flush=True)
