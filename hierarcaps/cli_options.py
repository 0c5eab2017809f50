"""Command-line options that several subcommands share (public: workshop command modules use them)."""

from __future__ import annotations

import argparse
from typing import Any

from .data.images import DEFAULT_IMAGE_SOURCE, IMAGE_SOURCES


def image_options(parser: argparse.ArgumentParser) -> None:
    """Where images come from: a local folder, the cache, and (with --download) the chosen source."""
    parser.add_argument("--image-dir", help="folder holding the images (default: $HIERARCAPS_IMAGE_DIR)")
    parser.add_argument("--download", action="store_true", help="download missing images into the cache")
    parser.add_argument("--image-source", choices=sorted(IMAGE_SOURCES), default=DEFAULT_IMAGE_SOURCE,
                        help="thumbnails: " + IMAGE_SOURCES["thumbnails"] + "; coco: " + IMAGE_SOURCES["coco"])


def image_store(args: argparse.Namespace, **kwargs: Any):
    """The ImageStore that ``image_options`` describe."""
    from .data.images import ImageStore

    return ImageStore(args.image_dir, download=args.download, source=args.image_source, **kwargs)
