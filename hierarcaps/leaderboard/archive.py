"""Opening a submission safely: a folder as is, or a .zip / .tar.gz unpacked with strict limits.

Refused: absolute paths, ``..``, links, devices and other special members, encrypted members, two members of
one name (case-insensitively), too many members, members or totals over the size limits (declared, and
counted as the bytes are written), and compression ratios that only a bomb has. Every limit is checked before
the bytes it guards are inflated: zip sizes from the central directory (and again while writing), tar headers
one by one as the stream reaches them, and every decompressed byte of a tar (headers included) against the
running total and its ratio to the compressed bytes consumed. Nothing is extracted outside a fresh temporary
folder.
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

MAX_MEMBERS = 16
"""Files and folders in an archive."""
MAX_FILE_BYTES = 256 * 2**20
"""One unpacked file."""
MAX_TOTAL_BYTES = 512 * 2**20
"""All unpacked files together (and the archive itself)."""
MAX_RATIO = 200
"""Unpacked bytes per compressed byte, past the first MiB (float embeddings compress about 1.1:1)."""
RATIO_GRACE_BYTES = 2**20
BLOCK = 1 << 20


class ArchiveRefused(Exception):
    """The archive breaks a safety rule; the message says which member and why."""


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (path.parts and ":" in path.parts[0]):
        raise ArchiveRefused(f"member {name!r}: absolute path")
    if ".." in path.parts:
        raise ArchiveRefused(f"member {name!r}: path escapes the archive ('..')")
    return path


def _check_sizes(sizes: list[tuple[str, int, int | None]]) -> None:
    if len(sizes) > MAX_MEMBERS:
        raise ArchiveRefused(f"{len(sizes)} members, more than the limit of {MAX_MEMBERS}")
    total = 0
    for name, size, compressed in sizes:
        if size > MAX_FILE_BYTES:
            raise ArchiveRefused(f"member {name!r}: {size} bytes, over the limit of {MAX_FILE_BYTES}")
        if compressed is not None and size > RATIO_GRACE_BYTES and size > MAX_RATIO * max(compressed, 1):
            raise ArchiveRefused(f"member {name!r}: compression ratio {size // max(compressed, 1)}:1 (zip bomb?)")
        total += size
    if total > MAX_TOTAL_BYTES:
        raise ArchiveRefused(f"{total} bytes unpacked, over the limit of {MAX_TOTAL_BYTES}")


class _Written:
    """Bytes really written so far, against the total limit (headers can lie; the bytes cannot)."""

    def __init__(self) -> None:
        self.total = 0

    def copy(self, source: IO[bytes], dest: Path, limit: int) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "xb") as out:        # "x": a member never overwrites an earlier one
            written = 0
            for block in iter(lambda: source.read(BLOCK), b""):
                written += len(block)
                self.total += len(block)
                if written > limit:
                    raise ArchiveRefused(f"member {dest.name!r} is larger than its header says")
                if self.total > MAX_TOTAL_BYTES:
                    raise ArchiveRefused(f"more than {MAX_TOTAL_BYTES} bytes unpacked")
                out.write(block)


def _unique(name: str, seen: set[str]) -> None:
    """Refuse a member whose name repeats an earlier one (case-insensitively: one file on many disks)."""
    key = str(_safe_name(name)).rstrip("/").casefold()
    if key in seen:
        raise ArchiveRefused(f"member {name!r}: a second member of the same name")
    seen.add(key)


def _check_zip_member(info: zipfile.ZipInfo, seen: set[str]) -> None:
    _unique(info.filename, seen)
    if info.flag_bits & 0x1:
        raise ArchiveRefused(f"member {info.filename!r}: encrypted")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveRefused(f"member {info.filename!r}: symbolic link")
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and stat.S_IFMT(mode):
        raise ArchiveRefused(f"member {info.filename!r}: not a regular file")


def _extract_zip(path: Path, target: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveRefused(f"{len(infos)} members, more than the limit of {MAX_MEMBERS}")
        seen: set[str] = set()
        for info in infos:
            _check_zip_member(info, seen)
        _check_sizes([(i.filename, i.file_size, i.compress_size) for i in infos if not i.is_dir()])
        written = _Written()
        for info in infos:
            if not info.is_dir():
                with archive.open(info) as source:
                    written.copy(source, target / _safe_name(info.filename), info.file_size)


class _BoundedInflation:
    """A read-only stream over decompressed bytes that refuses to inflate past the total or the ratio limit.

    ``raw`` counts the compressed bytes consumed; every read of the decompressed stream (tar headers, pax
    records and member data alike) is checked against both limits before it is handed on.
    """

    def __init__(self, inflated: IO[bytes], raw: BinaryIO) -> None:
        self.inflated, self.raw, self.produced = inflated, raw, 0

    def read(self, size: int = -1) -> bytes:
        size = BLOCK if size is None or size < 0 else min(size, BLOCK)
        data = self.inflated.read(size)
        self.produced += len(data)
        if self.produced > MAX_TOTAL_BYTES + MAX_MEMBERS * 4096:
            raise ArchiveRefused(f"more than {MAX_TOTAL_BYTES} bytes unpacked (tar bomb?)")
        consumed = max(self.raw.tell(), 1)
        if self.produced > RATIO_GRACE_BYTES and self.produced > MAX_RATIO * consumed:
            raise ArchiveRefused(f"compression ratio over {MAX_RATIO}:1 (tar bomb?)")
        return data


def _extract_tar(path: Path, target: Path) -> None:
    """Members in stream order, each header checked as it arrives, each byte inflated under the limits."""
    with open(path, "rb") as raw:
        inflated: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.lower().endswith(("gz", "tgz")) \
            else raw
        stream = _BoundedInflation(inflated, raw)
        total, count, seen, written = 0, 0, set(), _Written()
        with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                count += 1
                if count > MAX_MEMBERS:
                    raise ArchiveRefused(f"more than the limit of {MAX_MEMBERS} members")
                _unique(member.name, seen)
                if member.issym() or member.islnk():
                    raise ArchiveRefused(f"member {member.name!r}: link")
                if member.isdir():
                    continue
                if not member.isfile() or member.issparse():
                    raise ArchiveRefused(f"member {member.name!r}: not a regular file")
                total += member.size
                _check_sizes([(member.name, member.size, None)])
                if total > MAX_TOTAL_BYTES:
                    raise ArchiveRefused(f"{total} bytes unpacked, over the limit of {MAX_TOTAL_BYTES}")
                source = archive.extractfile(member)
                if source is not None:
                    written.copy(source, target / _safe_name(member.name), member.size)


ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[Path]:
    """The submission's folder: ``path`` itself, or a temporary folder holding the archive's files."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    name = path.name.lower()
    if not name.endswith(ARCHIVE_SUFFIXES):
        raise ArchiveRefused(f"{path.name}: not a folder, .zip, .tar.gz or .tar")
    if not path.is_file():
        raise ArchiveRefused(f"{path.name}: no such file")
    if path.stat().st_size > MAX_TOTAL_BYTES:
        raise ArchiveRefused(f"{path.name}: {path.stat().st_size} bytes, over the limit of {MAX_TOTAL_BYTES}")
    target = Path(tempfile.mkdtemp(prefix="hc-submission-"))
    try:
        try:
            (_extract_zip if name.endswith(".zip") else _extract_tar)(path, target)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError,
                OSError, ValueError, NotImplementedError) as exc:
            raise ArchiveRefused(f"{path.name}: unreadable archive ({type(exc).__name__}: {exc})") from None
        entries = list(target.iterdir())
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else target
    finally:
        shutil.rmtree(target, ignore_errors=True)
