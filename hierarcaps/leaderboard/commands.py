"""CLI subcommands ``leaderboard template|validate|add|build|check``."""

from __future__ import annotations

import argparse

from ..commandline import Command, echo
from ..errors import HierarcapsError

DEFAULT_BOARD = "leaderboard"


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    template = sub.add_parser("template", help="write the id lists and an example submission.json")
    template.add_argument("out_dir")
    validate = sub.add_parser("validate", help="list every problem of a submission (folder, .zip or .tar.gz)")
    validate.add_argument("path")
    add = sub.add_parser("add", help="validate, score and store a submission on the board")
    add.add_argument("path")
    add.add_argument("--board", default=DEFAULT_BOARD)
    add.add_argument("--replace", metavar="MODEL/REVISION",
                     help="the entry this submission replaces (same model and revision, or the same embeddings "
                          "under another name), named by its folders under entries/")
    for name, help_text in (("build", "render README.md and index.html from the entries"),
                            ("check", "validate the whole board folder (for submission pull requests)")):
        action = sub.add_parser(name, help=help_text)
        action.add_argument("--board", default=DEFAULT_BOARD)


def _leaderboard(args: argparse.Namespace) -> int:
    from . import board
    from .submission import write_template
    from .validate import validate

    if args.action == "template":
        echo(f"wrote {write_template(args.out_dir)}: fill submission.json, add embeddings.npz with rows in id order")
        return 0
    if args.action == "validate":
        sub, report = validate(args.path)
        for line in report.problems:
            echo(f"problem: {line}")
        for line in report.notes:
            echo(f"note: {line}")
        echo(f"{args.path}: {'valid' if sub else 'invalid'} ({len(report.problems)} problem(s))", err=True)
        return 0 if sub else 1
    if args.action == "add":
        folder, status = board.add(args.path, args.board, replace=args.replace)
        echo(f"{status}: {folder}")
        return 0
    if args.action == "build":
        for path in board.build(args.board):
            echo(f"wrote {path}")
        return 0
    problems = board.check(args.board)
    for line in problems:
        echo(line)
    if problems:
        raise HierarcapsError(f"{args.board}: {len(problems)} problem(s)")
    echo(f"{args.board}: ok")
    return 0


COMMANDS = (
    Command("leaderboard", "submissions: template, validate, add, build, check", _args, _leaderboard),
)
