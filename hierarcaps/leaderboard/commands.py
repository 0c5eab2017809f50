"""CLI subcommands ``leaderboard template|validate|add|build|rescore|check``."""

from __future__ import annotations

import argparse

from ..errors import HierarcapsError
from ..subcommand import Command, echo

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
                     help="confirms that this submission replaces its own entry (the same model and revision, "
                          "named by its folders under entries/); never another model's entry")
    build = sub.add_parser("build", help="render README.md and index.html from the entries")
    build.add_argument("--board", default=DEFAULT_BOARD)
    rescore = sub.add_parser("rescore", help="score every entry again from its kept embeddings with this "
                                             "package's metrics (after a metric is added), rewrite the results "
                                             "that changed and rebuild the pages")
    rescore.add_argument("--board", default=DEFAULT_BOARD)
    check = sub.add_parser("check", help="what a submission pull request runs: re-score entries from their "
                                         "embeddings, check every entry and the pages, print a markdown summary")
    check.add_argument("--board", default=DEFAULT_BOARD)
    which = check.add_mutually_exclusive_group()
    which.add_argument("--entry", action="append", metavar="FOLDER",
                       help="an entry folder to re-score (repeatable; default: every entry that keeps embeddings)")
    which.add_argument("--changed-since", metavar="GIT_REVISION",
                       help="re-score the entries changed since this revision (a pull request's base)")
    check.add_argument("--summary", metavar="FILE",
                       help="also append the markdown summary to FILE (e.g. $GITHUB_STEP_SUMMARY)")


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
    notes: list[str] = []
    if args.action == "add":
        folder, status = board.add(args.path, args.board, replace=args.replace, notes=notes)
        echo("\n".join([*notes, f"{status}: {folder}"]))
        return 0
    if args.action == "build":
        written = board.build(args.board, notes=notes)
        echo("\n".join([*notes, *(f"wrote {path}" for path in written)]))
        return 0
    if args.action == "rescore":
        changed = board.rescore(args.board, notes=notes)
        echo("\n".join([*notes, f"rescored {len(changed)} entr{'y' if len(changed) == 1 else 'ies'}",
                         *(f"  {folder}" for folder in changed)]))
        return 0
    return _check(args)


def _check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import review

    root = Path(args.board)
    entries = [Path(e) for e in args.entry] if args.entry else \
        review.changed_entries(root, args.changed_since) if args.changed_since else None
    outcome = review.review(root, entries)
    text = review.summary(root, outcome)
    echo(text)
    if args.summary:
        with open(args.summary, "a", encoding="utf-8") as handle:
            handle.write(text)
    if outcome.problems:
        raise HierarcapsError(f"{args.board}: {len(outcome.problems)} problem(s); first: {outcome.problems[0]}")
    return 0


COMMANDS = (
    Command("leaderboard", "submissions: template, validate, add, build, rescore, check", _args, _leaderboard),
)
