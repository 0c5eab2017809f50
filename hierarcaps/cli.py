"""The ``hierarcaps`` command: the top layer. Each workshop declares its subcommands (``COMMANDS`` of its
``commands`` module, thin calls into the package); this module imports them, plainly, and owns the process.

Exit codes: 0 success, 1 a reported problem (one line on stderr), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Sequence

from . import __version__
from .annotation import commands as annotation_commands
from .data import commands as data_commands
from .errors import HierarcapsError
from .finetune import commands as finetune_commands
from .generation import commands as generation_commands
from .harness import commands as harness_commands
from .leaderboard import commands as leaderboard_commands
from .models import commands as model_commands
from .reco import commands as reco_commands
from .subcommand import Command, echo

COMMANDS: tuple[Command, ...] = (
    *harness_commands.COMMANDS, *data_commands.COMMANDS, *model_commands.COMMANDS, *finetune_commands.COMMANDS,
    *leaderboard_commands.COMMANDS, *reco_commands.COMMANDS, *generation_commands.COMMANDS,
    *annotation_commands.COMMANDS,
)
"""Every subcommand, in the order ``--help`` lists them."""
DEBUG_ENV = "HIERARCAPS_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierarcaps", description="HierarCaps: visual-semantic hierarchy as a "
                                     "benchmark (data, metrics, models, leaderboard, generation, curation)")
    parser.add_argument("--version", action="version", version=f"hierarcaps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help, description=command.help,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        command.configure(child)
        child.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        echo(f"hierarcaps {args.command}: interrupted", err=True)
        return 130
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) and not isinstance(exc, HierarcapsError):
            raise
        echo(f"hierarcaps {args.command}: {problem_line(exc)}", err=True)
        return 1


def problem_line(exc: Exception) -> str:
    """One line for a failure: the package's own message; for a file the system refused, the file and why; for
    anything else (a bug) its type and message, and how to get the traceback."""
    if isinstance(exc, HierarcapsError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    elif isinstance(exc, MemoryError):
        message = "out of memory"
    else:
        message = (f"unexpected {type(exc).__name__}: {exc} (a bug: rerun with {DEBUG_ENV}=1 for the traceback, "
                   "and report it)")
    return " ".join(message.split())


def run() -> int:
    """The process entry point (the ``hierarcaps`` command and ``python -m hierarcaps``): it owns the process,
    so process-wide settings live here, not in ``main``."""
    from .models.torch_utils import keep_freed_memory

    keep_freed_memory()
    code = main()
    # the process ends here: shutdown then skips walking the torch/transformers object graph (about 1 s)
    gc.freeze()
    return code
