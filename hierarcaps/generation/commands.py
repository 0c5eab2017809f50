"""CLI subcommand ``generate``: run (or resume) a generation config, or write the example to edit."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import HierarcapsError
from ..subcommand import Command, echo, engine, engine_options
from . import stages


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("init", nargs="*", metavar="init DIR",
                   help="write the runnable example (config.yaml, captions.csv, prompts/) into DIR to edit")
    p.add_argument("--config", help="pipeline config (YAML): one `generate init` wrote, or generation/hierarcaps.yaml")
    p.add_argument("--dry-run", action="store_true", help="a handful of captions, 10 distillation steps, "
                                                          "written to <out>-dry-run")
    p.add_argument("--until", default="export", help="stop after this stage (default: export)",
                   choices=stages.names())
    p.add_argument("--out", help="output folder (overrides the config's `out`)")
    p.add_argument("--rethreshold", action="store_true",
                   help="re-decide the judged chains from their stored NLI probabilities under the config's "
                        "thresholds (no model runs); what the new decisions change runs again")
    p.add_argument("--no-progress", action="store_true")
    engine_options(p)


def _init(words: list[str]) -> int:
    from .prompts import write_example

    if len(words) != 2 or words[0] != "init":
        raise HierarcapsError("usage: hierarcaps generate init DIR, or hierarcaps generate --config FILE")
    config = write_example(Path(words[1]))
    echo(f"wrote {config}, {config.parent / 'captions.csv'} and {config.parent / 'prompts'}/; run it with: "
         f"hierarcaps generate --config {config} --dry-run")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import dry_run_config, run_generation, set_threads

    if args.init:
        return _init(args.init)
    if not args.config:
        raise HierarcapsError("--config is needed (`hierarcaps generate init DIR` writes one to start from)")
    config = load_config(args.config, {"out": args.out} if args.out else None)
    if args.dry_run:
        config = dry_run_config(config)
    if args.rethreshold:
        from .rethreshold import rethreshold

        for stage, counts in rethreshold(config).items():
            echo(f"{stage}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())))
        echo(f"re-decided {config.out}; run without --rethreshold to redo what the new decisions change")
        return 0
    set_threads(config.threads)
    folder = run_generation(config, until=args.until, progress=not args.no_progress, engine=engine(args))
    stats = folder / "stats.json"
    if stats.exists():
        summary = json.loads(stats.read_text())
        echo((folder / "stats.md").read_text())
        echo(f"wrote {summary['export']['hierarchies']} hierarchies to {folder}")
    else:
        echo(f"stage {args.until} done: {folder}")
    return 0


COMMANDS = (
    Command("generate", "make 4-tier positive and negative hierarchies from captions (LLM + NLI -> Flan-T5)",
         _generate_args, _generate),
)
