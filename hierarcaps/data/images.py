"""Finding the images of hierarchies: a local folder, the download cache, or the canonical source.

Two image sources exist, and they never mix (separate caches; results name theirs):
- ``thumbnails`` (default): the protocol's pixels, the 256x256 letterboxed test images that the reference
  evaluation scores, downloaded from the upstream repository at the pinned commit and verified against the
  shipped SHA-256s.
- ``coco``: the full-size COCO originals from each row's ``image_url``; other pixels, so other numbers.
Resolution order for each file name: ``image_dir`` (option or $HIERARCAPS_IMAGE_DIR), then the source's cache,
then a download from ``$HIERARCAPS_IMAGE_MIRROR/<file>`` when set, else from the source, into the cache.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._io import regular_file_size, sha256_file
from ..errors import DataError, HierarcapsError, ImagesUnavailableError
from .fetch import Breaker, ChecksumMismatch, DownloadFailed, cache_dir, download
from .official import manifest, test_image_sha256
from .records import Hierarchy

IMAGE_DIR_ENV = "HIERARCAPS_IMAGE_DIR"
MIRROR_ENV = "HIERARCAPS_IMAGE_MIRROR"
IMAGE_SOURCES = {
    "thumbnails": "the protocol's 256x256 test images (upstream assets/test_imgs at the pinned commit, "
                  "SHA-256 checked)",
    "coco": "the full-size COCO originals of each row's image_url (not the protocol's pixels; results say so)",
}
DEFAULT_IMAGE_SOURCE = "thumbnails"
THUMBNAIL_FOLDER = "assets/test_imgs/"


def thumbnail_base() -> str:
    """Where the protocol's test images live: the upstream repository's raw files at the pinned commit."""
    return manifest()["upstream"]["raw_url"] + THUMBNAIL_FOLDER


def image_recipe(source: str) -> str:
    """The name results and caches give the pixels of ``source``."""
    return "hierarcaps-thumbnails-256" if source == "thumbnails" else "coco-original"


class ImageStore:
    """Maps image file names to verified local paths, downloading what is missing when allowed."""

    def __init__(self, image_dir: str | os.PathLike[str] | None = None, *, download: bool = True,
                 mirror: str | None = None, workers: int = 16, source: str = DEFAULT_IMAGE_SOURCE) -> None:
        if source not in IMAGE_SOURCES:
            raise HierarcapsError(f"unknown image source {source!r}; choose from {', '.join(IMAGE_SOURCES)}")
        env_dir = os.environ.get(IMAGE_DIR_ENV)
        self.image_dir = Path(image_dir) if image_dir else (Path(env_dir) if env_dir else None)
        self.source = source
        self.cache = cache_dir() / ("images" if source == "thumbnails" else f"images-{source}")
        self.allow_download = download
        self.mirror = mirror or os.environ.get(MIRROR_ENV)
        self.workers = workers
        self.checksums = test_image_sha256() if source == "thumbnails" else {}

    def _local(self, name: str) -> Path | None:
        for folder in (self.image_dir, self.cache):
            if folder is not None and (folder / name).is_file():
                return folder / name
        return None

    def _verify(self, path: Path) -> None:
        expected = self.checksums.get(path.name)
        if expected is not None and sha256_file(path) != expected:
            raise ChecksumMismatch(f"{path}: SHA-256 does not match the shipped manifest "
                                   "(corrupted or a different image); delete it to re-download")

    def digest(self, path: Path) -> str:
        """SHA-256 of a resolved image: the manifest's (``resolve`` verified it) or computed for others."""
        return self.checksums.get(path.name) or sha256_file(path)

    def _url(self, name: str, url: str | None) -> str | None:
        """Where to download ``name`` from: the mirror, else the source (only test images have thumbnails)."""
        if self.mirror:
            return self.mirror.rstrip("/") + "/" + name
        if self.source == "thumbnails":
            return thumbnail_base() + name if name in self.checksums else None
        return url

    def _fetch(self, name: str, url: str) -> Path:
        return download(url, self.cache / name, sha256=self.checksums.get(name))

    def resolve(self, records: Iterable[Hierarchy], *, progress: bool = True) -> dict[str, Path]:
        """Verified local path for every distinct image of ``records``; downloads what is missing.

        Raises :class:`ImagesUnavailableError` naming how many files are missing and how to provide them.
        """
        wanted: dict[str, str | None] = {}
        for record in records:
            if record.image_file:
                wanted.setdefault(record.image_file, record.image_url)
        found: dict[str, Path] = {}
        missing: dict[str, str | None] = {}
        for name, url in wanted.items():
            path = self._local(name)
            if path is None:
                missing[name] = url
            else:
                self._verify(path)
                found[name] = path
        failures: dict[str, Exception] = {}
        if missing and self.allow_download:
            fetched, failures = self._download_all(missing, progress=progress)
            found.update(fetched)
            missing = {name: url for name, url in missing.items() if name not in found}
        if missing:
            example = next(iter(missing))
            reason = f"; first download error: {next(iter(failures.values()))}" if failures else ""
            if self.source == "thumbnails" and not self.mirror and any(n not in self.checksums for n in missing):
                reason += "; only the 1,000 test images have protocol thumbnails (use --image-source coco)"
            raise ImagesUnavailableError(
                f"{len(missing)} of {len(wanted)} images are missing (e.g. {example}); put them in a folder and "
                f"pass --image-dir or set ${IMAGE_DIR_ENV}, or run `hierarcaps download` with network access"
                + reason)
        return found

    def audit(self, records: Iterable[Hierarchy], *, file: str | None = None, progress: bool = True) -> list[str]:
        """Every image problem of ``records``, one line each (missing, failed download, wrong bytes, undecodable),
        located by the first row that names the image; nothing is raised."""
        from tqdm.auto import tqdm

        rows: dict[str, tuple[int, str | None]] = {}
        for row, record in enumerate(records, start=1):
            if record.image_file:
                rows.setdefault(record.image_file, (row, record.image_url))
        problems = []
        for name, (row, url) in tqdm(rows.items(), desc="Checking images", disable=not progress, unit="img"):
            try:
                path = self._local(name)
                if path is None:
                    source = self._url(name, url) if self.allow_download else None
                    if source is None:
                        raise ImagesUnavailableError("missing (pass --image-dir, or --download with network access)")
                    path = self._fetch(name, source)
                self._verify(path)
                open_image(path)
            except (HierarcapsError, OSError) as exc:
                problems.append(str(DataError(f"{name}: {exc}", file=file, row=row, field="image_url")))
        return problems

    def _download_all(self, missing: dict[str, str | None], *, progress: bool
                      ) -> tuple[dict[str, Path], dict[str, Exception]]:
        """Download in parallel with a progress bar (files already cached are never fetched again, so an
        interrupted run resumes). A checksum mismatch is fatal; so is a host that fails the same way a few files
        in a row (see :class:`Breaker`), which stops the remaining downloads; other failures are returned."""
        from tqdm.auto import tqdm

        jobs = {name: self._url(name, url) for name, url in missing.items()}
        jobs = {name: url for name, url in jobs.items() if url}
        breaker = Breaker()

        def fetch(item: tuple[str, str]) -> tuple[str, Path | Exception | None]:
            name, url = item
            if breaker.tripped:
                return name, None
            try:
                path = self._fetch(name, url)
            except DownloadFailed as exc:
                breaker.failed(exc)
                return name, exc
            except Exception as exc:  # collected and reported by the caller
                return name, exc
            breaker.succeeded(url)
            return name, path

        done: dict[str, Path] = {}
        failures: dict[str, Exception] = {}
        with ThreadPoolExecutor(self.workers) as pool:
            results = pool.map(fetch, jobs.items())
            for name, outcome in tqdm(results, total=len(jobs), desc="Downloading images", disable=not progress,
                                      unit="img"):
                if isinstance(outcome, Path):
                    done[name] = outcome
                elif outcome is not None:
                    failures[name] = outcome
        if breaker.tripped:
            raise ImagesUnavailableError(
                f"{breaker.tripped}; stopped with {len(done)} of {len(jobs)} downloaded (kept in the cache for a "
                f"later run); put the images in a folder and pass --image-dir (or set ${IMAGE_DIR_ENV}), or set "
                f"${MIRROR_ENV} to a server that has them")
        mismatches = [exc for exc in failures.values() if isinstance(exc, ChecksumMismatch)]
        if mismatches:
            raise ChecksumMismatch(f"{len(mismatches)} download(s) did not match the manifest; first: {mismatches[0]}")
        return done, failures


MAX_IMAGE_PIXELS = 64 * 2**20
"""Pixels of one image (COCO images have about 0.3M); checked from the header, before anything is decoded."""
HIGH_DEPTH_MODES = {"I;16": 257, "I;16L": 257, "I;16B": 257, "I;16N": 257, "I": 257, "F": 1 / 255}
"""Pillow modes whose values exceed 8 bits, and the divisor that maps their full range onto 0..255 (16-bit
integers; floats in 0..1). Pillow's own conversion to RGB clips them instead, which turns most pixels white."""


def image_options(parser: argparse.ArgumentParser) -> None:
    """Where images come from: a local folder, the cache, and (with --download) the chosen source."""
    parser.add_argument("--image-dir", help="folder holding the images (default: $HIERARCAPS_IMAGE_DIR)")
    parser.add_argument("--download", action="store_true", help="download missing images into the cache")
    parser.add_argument("--image-source", choices=sorted(IMAGE_SOURCES), default=DEFAULT_IMAGE_SOURCE,
                        help="thumbnails: " + IMAGE_SOURCES["thumbnails"] + "; coco: " + IMAGE_SOURCES["coco"])


def image_store(args: argparse.Namespace, **kwargs: Any) -> ImageStore:
    """The ImageStore that ``image_options`` describe."""
    return ImageStore(args.image_dir, download=args.download, source=args.image_source, **kwargs)


def rgb(image: Any) -> Any:
    """The RGB picture an image shows: EXIF orientation applied, 16-bit and float values scaled (not clipped)
    to 8 bits. Applied to a file's image and to a `datasets` image alike, so both give the same pixels."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64) / HIGH_DEPTH_MODES[image.mode]
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Any:
    """Decode an image file as RGB (see ``rgb``), refusing one over ``MAX_IMAGE_PIXELS`` before decoding it,
    with an error naming the file if it is truncated, too large or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        regular_file_size(path, what="image")
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{image.width} x {image.height} pixels, over the limit of {MAX_IMAGE_PIXELS}",
                                file=str(path), field="image")
            return rgb(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image ({exc})", file=str(path), field="image") from None


def portable_bytes(path: Path) -> bytes:
    """The bytes to embed for an image in a `datasets` export: the file itself, unless `datasets` would decode
    it to other pixels than ``open_image`` (high-depth values, which it leaves unscaled): then a PNG of
    ``open_image``'s pixels. EXIF orientation is applied by `datasets` too, so such files are kept as they are."""
    import io

    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in HIGH_DEPTH_MODES:
            return path.read_bytes()
    buffer = io.BytesIO()
    open_image(path).save(buffer, format="PNG")
    return buffer.getvalue()
