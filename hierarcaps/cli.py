"""The ``hierarcaps`` command: each subcommand is a thin call into the package.

Exit codes: 0 success, 1 a reported problem (one line on stderr), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from collections.abc import Callable, Sequence

from . import __version__
from .cli_options import echo, image_options, image_store
from .errors import HierarcapsError

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand: its help, its arguments, and the handler it calls."""
    def wrap(handler: Handler) -> Handler:
        COMMANDS[name] = (help_text, configure, handler)
        return handler
    return wrap


# -- data ---------------------------------------------------------------------------------------------

def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="folder to create (parquet shards + README.md dataset card)")
    p.add_argument("--config", dest="configs", action="append", choices=["test", "test_expanded", "train"],
                   help="config to export (repeatable; default: test and test_expanded, plus train with --train)")
    p.add_argument("--train", help="path or URL of the official training file (positive,negative[,image_url])")
    p.add_argument("--images", choices=["auto", "require", "skip"], default="require",
                   help="embed the test images: all of them or fail (require), if available (auto), or none (skip; "
                        "the dataset card says so)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    image_options(p)


@command("export", "write HierarCaps as parquet + dataset card for datasets.load_dataset", _export_args)
def _export(args: argparse.Namespace) -> int:
    from .data.hf import export

    out = export(args.out_dir, configs=args.configs or ("test", "test_expanded"), train=args.train,
                 image_dir=args.image_dir, images=args.images, download=args.download, overwrite=args.overwrite,
                 image_source=args.image_source)
    card = (out / "README.md").read_text()
    images = "no images" if "No images are embedded" in card else "the test images embedded"
    echo(f"wrote {out} with {images} (load with datasets.load_dataset({str(out)!r}, 'test'))")
    return 0


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="hierarchy file: CSV (official formats), CSV.gz or parquet, or a URL")
    p.add_argument("--tiers", type=int, default=4, help="expected tiers per chain (default 4; 0: any)")
    p.add_argument("--images", action="store_true", help="also check that every image resolves and decodes")
    image_options(p)


@command("validate", "check a hierarchy file and list every problem", _validate_args)
def _validate(args: argparse.Namespace) -> int:
    from .data.csvio import parse_file

    records, problems = parse_file(args.file, n_tiers=args.tiers or None)
    messages = [str(p) for p in problems]
    if args.images:
        messages.extend(_image_problems(records, args))
    for message in messages:
        echo(message)
    echo(f"{args.file}: {len(records)} record(s), {len(messages)} problem(s)", err=True)
    return 1 if messages else 0


def _image_problems(records, args: argparse.Namespace) -> list[str]:
    return image_store(args).audit(records, file=args.file)


@command("models", "list the model adapters: spec prefixes of the package and of installed plugins",
         lambda p: None)
def _models(args: argparse.Namespace) -> int:
    from .models.registry import adapters

    rows = [("minilm", "the packaged all-MiniLM-L6-v2 (offline)", "hierarcaps"),
            *((f"{a.prefix}..." + (f"  e.g. {a.example}" if a.example else ""), a.description, a.origin)
              for a in adapters()),
            ("org/name", "a hub id: transformers dual encoder", "hierarcaps"),
            ("FOLDER", "a local model folder, detected from its files", "hierarcaps")]
    width = max(len(r[0]) for r in rows)
    for spec, description, origin in rows:
        echo(f"{spec.ljust(width)}  {description}" + (f"  [{origin}]" if origin != "hierarcaps" else ""))
    return 0


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=["test", "test_expanded"], default="test",
                   help="whose images to fetch (default: the 1,000 test images)")
    p.add_argument("--image-dir", help="a folder to use before downloading (default: $HIERARCAPS_IMAGE_DIR)")


@command("download", "download and verify the images of a split into the cache", _download_args)
def _download(args: argparse.Namespace) -> int:
    from .data.images import ImageStore
    from .data.official import load_official

    store = ImageStore(args.image_dir, download=True)
    paths = store.resolve(load_official(args.split))
    echo(f"{len(paths)} image(s) verified; cache: {store.cache}")
    return 0


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output file (.csv or .csv.gz, official pairs format)")


@command("split", "write the offline training split (expanded rows of non-test images, leakage removed)",
         _split_args)
def _split(args: argparse.Namespace) -> int:
    from .data.csvio import write_csv
    from .data.records import content_checksum
    from .data.splits import offline_train_split

    records = offline_train_split()
    write_csv(records, args.out, fmt="pairs")
    echo(f"wrote {len(records)} rows to {args.out} ({content_checksum(records)})")
    return 0


def _leakage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="training file (path or URL) to check against the test set")
    p.add_argument("--out", help="write the rows that survive the check here")
    p.add_argument("--image-dir", help="the training images: compared with the test images by content (SHA-256), "
                                       "so renamed copies are found too")


@command("leakage", "check a training file against the test set (shared images, repeated captions)", _leakage_args)
def _leakage(args: argparse.Namespace) -> int:
    from .data.csvio import read_hierarchies, write_csv
    from .data.splits import check_leakage

    records = read_hierarchies(args.file, n_tiers=None)
    digests = _image_digests(records, args.image_dir) if args.image_dir else None
    kept, report = check_leakage(records, train_digests=digests)
    echo(json.dumps({"file": args.file, "rows": len(records), "shared_images": len(report.shared_images),
                      "overlapping_rows": len(report.overlapping_rows), "kept": report.kept}))
    if report.shared_images:
        raise HierarcapsError(f"{args.file}: {report.summary()}; refusing a file that shares test images")
    if args.out:
        write_csv(kept, args.out, fmt="pairs")
    return 0


def _image_digests(records, image_dir: str) -> dict[str, str]:
    """SHA-256 of each training image that lies in ``image_dir`` (regular files only)."""
    from pathlib import Path

    from ._io import sha256_file

    folder = Path(image_dir)
    if not folder.is_dir():
        raise HierarcapsError(f"image folder {image_dir} does not exist")
    names = {r.image_file for r in records if r.image_file}
    return {name: sha256_file(folder / name) for name in sorted(names) if (folder / name).is_file()}


# -- entry point --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierarcaps", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hierarcaps {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, configure, handler) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        configure(child)
        child.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _register_optional_commands()
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


DEBUG_ENV = "HIERARCAPS_DEBUG"


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


def _register_optional_commands() -> None:
    """Import the modules that register the workshop subcommands (each imports its heavy stack lazily)."""
    import importlib

    for module in WORKSHOP_COMMANDS:
        importlib.import_module(module)


WORKSHOP_COMMANDS = (
    "hierarcaps.benchmarks.commands", "hierarcaps.finetune.commands", "hierarcaps.leaderboard.commands",
    "hierarcaps.reco.commands", "hierarcaps.generation.commands", "hierarcaps.annotation.commands",
)

