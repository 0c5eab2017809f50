"""CLI subcommands about the dataset itself: ``export``, ``validate``, ``download``, ``split``, ``leakage``."""

from __future__ import annotations

import argparse
import json

from ..errors import HierarcapsError
from ..subcommand import Command, echo, whole_number
from .images import image_options, image_store


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


def _export(args: argparse.Namespace) -> int:
    from .hf import export

    out = export(args.out_dir, configs=args.configs or ("test", "test_expanded"), train=args.train,
                 image_dir=args.image_dir, images=args.images, download=args.download, overwrite=args.overwrite,
                 image_source=args.image_source)
    card = (out / "README.md").read_text()
    images = "no images" if "No images are embedded" in card else "the test images embedded"
    echo(f"wrote {out} with {images} (load with datasets.load_dataset({str(out)!r}, 'test'))")
    return 0


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="hierarchy file: CSV (official formats), CSV.gz or parquet, or a URL")
    p.add_argument("--tiers", type=whole_number(0, 64), default=4, help="expected tiers per chain (default 4; 0: any)")
    p.add_argument("--images", action="store_true", help="also check that every image resolves and decodes")
    image_options(p)


def _validate(args: argparse.Namespace) -> int:
    from .csvio import parse_file

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


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=["test", "test_expanded"], default="test",
                   help="whose images to fetch (default: the 1,000 test images)")
    p.add_argument("--image-dir", help="a folder to use before downloading (default: $HIERARCAPS_IMAGE_DIR)")


def _download(args: argparse.Namespace) -> int:
    from .images import ImageStore
    from .official import load_official

    store = ImageStore(args.image_dir, download=True)
    paths = store.resolve(load_official(args.split))
    echo(f"{len(paths)} image(s) verified; cache: {store.cache}")
    return 0


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output file (.csv or .csv.gz, official pairs format)")


def _split(args: argparse.Namespace) -> int:
    from .csvio import write_csv
    from .records import content_checksum
    from .splits import offline_train_split

    records = offline_train_split()
    write_csv(records, args.out, fmt="pairs")
    echo(f"wrote {len(records)} rows to {args.out} ({content_checksum(records)})")
    return 0


def _leakage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="training file (path or URL) to check against the test set")
    p.add_argument("--out", help="write the rows that survive the check here")
    p.add_argument("--image-dir", help="the training images: compared with the test images by content (SHA-256), "
                                       "so renamed copies are found too")


def _leakage(args: argparse.Namespace) -> int:
    from .csvio import read_hierarchies, write_csv
    from .splits import check_leakage

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

    from .._io import sha256_file

    folder = Path(image_dir)
    if not folder.is_dir():
        raise HierarcapsError(f"image folder {image_dir} does not exist")
    names = {r.image_file for r in records if r.image_file}
    return {name: sha256_file(folder / name) for name in sorted(names) if (folder / name).is_file()}


COMMANDS = (
    Command("export", "write HierarCaps as parquet + dataset card for datasets.load_dataset", _export_args, _export),
    Command("validate", "check a hierarchy file and list every problem", _validate_args, _validate),
    Command("download", "download and verify the images of a split into the cache", _download_args, _download),
    Command("split", "write the offline training split (expanded rows of non-test images, leakage removed)",
            _split_args, _split),
    Command("leakage", "check a training file against the test set (shared images, repeated captions)",
            _leakage_args, _leakage),
)
