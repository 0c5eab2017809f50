"""CLI subcommand ``annotate push|pull``."""

from __future__ import annotations

import argparse
import json

from ..subcommand import Command, echo


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="Label Studio URL (default: $LABEL_STUDIO_URL or http://localhost:8080)")
    p.add_argument("--token", help="API token (default: $LABEL_STUDIO_API_KEY); never printed")
    p.add_argument("--project", required=True, help="project title (created on first push)")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed network call (default 3)")


def _annotate_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = sub.add_parser("push", help="create or reuse the project and import hierarchies not yet in it")
    push.add_argument("source", help="hierarchy file (a generated hierarchies.parquet/.csv or an official file)")
    _server_options(push)
    push.add_argument("--label-config", help="labeling config XML (default: the one shipped with the package)")
    push.add_argument("--image-dir", help="serve local images from this folder (else tasks use image URLs)")
    push.add_argument("--document-root", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    push.add_argument("--generator", help="model version shown on the predictions (default: from the file)")
    push.add_argument("--batch-size", type=int, default=100)
    push.add_argument("--limit", type=int, help="push only the first N items")
    push.add_argument("--overlap", type=int, default=1,
                      help="annotators per task; agreement (Krippendorff's alpha) needs 2 or more")
    push.add_argument("--no-progress", action="store_true")
    pull = sub.add_parser("pull", help="export the annotations and write the curated split + statistics")
    _server_options(pull)
    pull.add_argument("--out", required=True, help="folder for curated.csv, curated.parquet, stats.json")
    pull.add_argument("--nli", help="an NLI model (hub id or folder) that re-checks the links of every edited chain")


def _annotate(args: argparse.Namespace) -> int:
    from .server import Server
    from .workflow import pull, push

    server = Server(args.url, args.token, retries=args.retries)
    if args.action == "push":
        result = push(args.source, args.project, server=server, label_config=args.label_config,
                      image_dir=args.image_dir, document_root=args.document_root, generator=args.generator,
                      batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress,
                      overlap=args.overlap)
        echo(f"project {result['project']!r} (id {result['project_id']}): {result['created']} task(s) created, "
              f"{result['already_there']} already there")
        return 0
    stats = pull(args.project, args.out, server=server, nli_model=args.nli)
    echo(json.dumps({k: stats[k] for k in ("tasks", "completed", "pending", "skipped", "accepted_as_is", "edited",
                                            "rejected", "failed_checks", "records", "agreement")}, indent=2))
    echo(f"wrote the curated split to {args.out}")
    return 0


COMMANDS = (
    Command("annotate", "curate hierarchies in Label Studio: push tasks, pull the curated split", _annotate_args,
            _annotate),
)
