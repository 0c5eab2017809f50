"""CLI subcommands of the harness: ``evaluate`` (with ``--export-submission``), ``report`` and ``zeroshot``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.images import image_options
from ..errors import HierarcapsError
from ..models.registry import DEFAULT_MODEL, spec_help
from ..subcommand import Command, echo

if TYPE_CHECKING:
    from ..models.base import Encoder
    from .evaluation import EvalOptions


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    from ..models.registry import spec_help

    p.add_argument("--model", default=DEFAULT_MODEL, help=spec_help())
    p.add_argument("--split", default="test", choices=["test", "test_expanded"], help="shipped split to score")
    p.add_argument("--data", help="score another hierarchy file (official test format) instead")
    p.add_argument("--text-only", action="store_true", help="skip images even for image-text models")
    p.add_argument("--out", default="results", help="folder for result JSON (and plots); default ./results")
    p.add_argument("--plots", action="store_true", help="also write PNGs: radii per tier, predicted chains")
    p.add_argument("--steps", type=int, default=50, help="protocol thresholds (50 = hierarcaps-v1)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--text-batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="image decoding processes (default: one per core, at most 16)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-cache", action="store_true", help="recompute embeddings instead of reading the cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--export-submission", metavar="DIR", help="also write a leaderboard submission of this model")
    image_options(p)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EvalOptions, evaluate, save_result
    from .report import result_table

    options = EvalOptions(split=args.split, data=args.data, image_dir=args.image_dir, download=args.download,
                          image_source=args.image_source,
                          text_only=args.text_only, text_batch_size=args.text_batch_size,
                          image_batch_size=args.batch_size, steps=args.steps,
                          resamples=args.resamples, seed=args.seed, cache=not args.no_cache, device=args.device,
                          progress=not args.quiet, **({"workers": args.workers} if args.workers is not None else {}))
    if args.steps != 50:
        echo(f"note: --steps {args.steps} is not the hierarcaps-v1 protocol; the result records it", err=True)
    result = evaluate(args.model, options)
    path = save_result(result, args.out)
    echo(result_table(result))
    timings = result.extra["timings"]
    echo(f"\nsaved {path} ({timings['total_s']:.1f} s, {timings['embedding_cache_hits']} cache hit(s))")
    if args.plots:
        for plot in _plots(args.model, options, path.parent):
            echo(f"plot {plot}")
    if args.export_submission:
        folder = export_submission(args.model, options, args.export_submission)
        echo(f"submission written to {folder} (edit submission.json, then `hierarcaps leaderboard validate`)")
    return 0


def _plots(model: str, options, folder: Path) -> list[Path]:
    """Re-read the cached embeddings and draw the run's pictures (those drawn: matplotlib is optional)."""
    from ..metrics.scoring import per_unit_metrics
    from ..models.registry import load_encoder
    from .evaluation import benchmark_records, embed_benchmark
    from .plots import predicted_chains, radius_by_tier

    options.progress = False
    encoder = load_encoder(model, device=options.device, lazy=True)
    records = benchmark_records(options)
    embedded = embed_benchmark(encoder, records, options)
    out = [radius_by_tier(embedded.bench, folder / "radius_by_tier.png", encoder.name)]
    if embedded.image_files:
        _, chains = per_unit_metrics(embedded.bench, steps=options.steps)
        paths = options.image_store().resolve(records, progress=False)
        out.append(predicted_chains(embedded.bench, chains["image"], [paths[f] for f in embedded.image_files],
                                    folder / "predicted_chains.png"))
    return [plot for plot in out if plot is not None]


def _report_args(p: argparse.ArgumentParser) -> None:
    from .report import REPORT_FORMATS

    p.add_argument("paths", nargs="+", help="result JSON files or folders holding them (leaderboard entries too)")
    p.add_argument("--format", dest="output", choices=REPORT_FORMATS, default="text",
                   help="text table, markdown table, CSV (value and CI columns) or JSON")
    p.add_argument("--markdown", action="store_const", dest="output", const="markdown",
                   help="same as --format markdown")
    p.add_argument("--out", help="write the report to this file instead of printing it")


def _report(args: argparse.Namespace) -> int:
    from .._io import atomic_open
    from .report import read_results, report

    text = report(read_results(args.paths), args.output)
    if args.out:
        with atomic_open(args.out) as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
        echo(f"wrote {args.out}")
    else:
        echo(text)
    return 0


def _zeroshot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=spec_help())
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", help="a folder of class subfolders")
    group.add_argument("--dataset", help="a datasets folder or name with image and ClassLabel columns")
    p.add_argument("--split", default="test")
    p.add_argument("--templates", help="a text file, one template with {} per line")
    p.add_argument("--workers", type=int, default=1)


def _zeroshot(args: argparse.Namespace) -> int:

    from ..models.registry import load_encoder
    from .zeroshot import DEFAULT_TEMPLATES, dataset_split, image_folder, read_templates, zero_shot

    images, labels, names = image_folder(args.images) if args.images else dataset_split(args.dataset,
                                                                                       split=args.split)
    templates = read_templates(args.templates) if args.templates else DEFAULT_TEMPLATES
    echo(json.dumps(zero_shot(load_encoder(args.model, lazy=True), images, labels, names, templates,
                               workers=args.workers), indent=2))
    return 0


COMMANDS = (
    Command("evaluate", "score a model on HierarCaps (hierarchy + retrieval metrics, CIs, baselines)", _evaluate_args,
            _evaluate),
    Command("zeroshot", "zero-shot classification accuracy of a model (e.g. a RECO model) on labelled images",
            _zeroshot_args, _zeroshot),
    Command("report", "merge result JSON files into one table: CIs, main score, baselines", _report_args, _report),
)


def export_submission(model: str | Encoder, options: EvalOptions, folder: str | os.PathLike[str],
                      metadata: dict[str, Any] | None = None) -> Path:
    """A leaderboard submission (embeddings.npz + id lists + submission.json) from any model the harness loads:
    the harness's embeddings in the board's format, composed here in the command layer so that neither
    workshop imports the other.

    Embeddings come from the cache when `evaluate` just ran. Edit submission.json (licence, link, training
    data) before submitting.
    """
    from ..data.official import load_official
    from ..leaderboard.submission import write_submission
    from ..models.registry import load_encoder
    from .evaluation import embed_benchmark

    if options.data or options.split != "test":
        raise HierarcapsError("submissions are for the official test split (no --data, --split test)")
    encoder = load_encoder(model, device=options.device, lazy=True) if isinstance(model, str) else model
    records = load_official("test")
    bench = embed_benchmark(encoder, records, options).bench
    info = encoder.metadata()
    model_meta = {"name": info["name"], "revision": str(info.get("revision") or info["fingerprint"]),
                  "parameters": int(info.get("parameters") or 0), "licence": "unknown", "link": "",
                  "training_data": "unknown"}
    return write_submission(folder, records, bench.root, bench.text_emb.reshape(-1, bench.root.shape[0]),
                            bench.image_emb, {"model": {**model_meta, **(metadata or {})}})
