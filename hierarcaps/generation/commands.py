"""CLI subcommand ``generate``: run (or resume) a generation config."""

from __future__ import annotations

import argparse
import json

from ..cli import command
from ..cli_options import echo, engine, engine_options
from .config import STAGES


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="pipeline config (YAML), e.g. generation/hierarcaps.yaml")
    p.add_argument("--dry-run", action="store_true", help="a handful of captions, 10 distillation steps, "
                                                          "written to <out>-dry-run")
    p.add_argument("--until", default="export", help="stop after this stage (default: export)",
                   choices=list(STAGES))
    p.add_argument("--out", help="output folder (overrides the config's `out`)")
    p.add_argument("--rethreshold", action="store_true",
                   help="re-decide the judged chains from their stored NLI probabilities under the config's "
                        "thresholds (no model runs); distill, build and export then run again")
    p.add_argument("--no-progress", action="store_true")
    engine_options(p)


@command("generate", "make 4-tier positive and negative hierarchies from captions (LLM + NLI -> Flan-T5)",
         _generate_args)
def _generate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runner import dry_run_config, run_generation

    config = load_config(args.config, {"out": args.out} if args.out else None)
    if args.dry_run:
        config = dry_run_config(config)
    if args.rethreshold:
        from .runner import rethreshold

        for stage, counts in rethreshold(config).items():
            echo(f"{stage}: " + ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items())))
        echo(f"re-decided {config.out}; run without --rethreshold to rebuild distill, build and export")
        return 0
    folder = run_generation(config, until=args.until, progress=not args.no_progress, engine=engine(args))
    stats = folder / "stats.json"
    if stats.exists():
        summary = json.loads(stats.read_text())
        echo((folder / "stats.md").read_text())
        echo(f"wrote {summary['export']['hierarchies']} hierarchies to {folder}")
    else:
        echo(f"stage {args.until} done: {folder}")
    return 0
