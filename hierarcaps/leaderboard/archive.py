"""Opening a submission safely: a folder as is, or a .zip / .tar.gz unpacked with strict limits.

Refused: absolute paths, ``..``, links and devices, too many members, members or totals over the size
limits, and compression ratios that only a bomb has. Nothing is extracted outside a fresh temporary folder.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

MAX_MEMBERS = 16
MAX_FILE_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 512 * 2**20
MAX_RATIO = 200


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
        if compressed is not None and size > 2**20 and size > MAX_RATIO * max(compressed, 1):
            raise ArchiveRefused(f"member {name!r}: compression ratio {size // max(compressed, 1)}:1 (zip bomb?)")
        total += size
    if total > MAX_TOTAL_BYTES:
        raise ArchiveRefused(f"{total} bytes unpacked, over the limit of {MAX_TOTAL_BYTES}")


def _write_bounded(source, dest: Path, limit: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        written = 0
        for block in iter(lambda: source.read(1 << 20), b""):
            written += len(block)
            if written > limit:
                raise ArchiveRefused(f"member {dest.name!r} is larger than its header says")
            out.write(block)


def _extract_zip(path: Path, target: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveRefused(f"{len(infos)} members, more than the limit of {MAX_MEMBERS}")
        for info in infos:
            _safe_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveRefused(f"member {info.filename!r}: symbolic link")
        _check_sizes([(i.filename, i.file_size, i.compress_size) for i in infos if not i.is_dir()])
        for info in infos:
            if not info.is_dir():
                with archive.open(info) as source:
                    _write_bounded(source, target / _safe_name(info.filename), info.file_size)


def _extract_tar(path: Path, target: Path) -> None:
    compressed = path.stat().st_size
    with tarfile.open(path, "r:*") as archive:
        members = []
        for member in archive:
            members.append(member)
            if len(members) > MAX_MEMBERS:
                raise ArchiveRefused(f"more than the limit of {MAX_MEMBERS} members")
        for member in members:
            _safe_name(member.name)
            if member.issym() or member.islnk():
                raise ArchiveRefused(f"member {member.name!r}: link")
            if not (member.isfile() or member.isdir()):
                raise ArchiveRefused(f"member {member.name!r}: not a regular file")
        files = [m for m in members if m.isfile()]
        _check_sizes([(m.name, m.size, None) for m in files])
        if sum(m.size for m in files) > 2**20 and sum(m.size for m in files) > MAX_RATIO * compressed:
            raise ArchiveRefused("compression ratio over the limit (tar bomb?)")
        for member in files:
            source = archive.extractfile(member)
            assert source is not None
            _write_bounded(source, target / _safe_name(member.name), member.size)


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[Path]:
    """The submission's folder: ``path`` itself, or a temporary folder holding the archive's files."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    name = path.name.lower()
    if not (name.endswith(".zip") or name.endswith((".tar.gz", ".tgz", ".tar"))):
        raise ArchiveRefused(f"{path.name}: not a folder, .zip or .tar.gz")
    target = Path(tempfile.mkdtemp(prefix="hc-submission-"))
    try:
        try:
            (_extract_zip if name.endswith(".zip") else _extract_tar)(path, target)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveRefused(f"{path.name}: unreadable archive ({exc})") from None
        entries = [p for p in target.iterdir()]
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else target
    finally:
        shutil.rmtree(target, ignore_errors=True)
