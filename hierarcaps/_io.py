"""Atomic file writes (a reader never sees a half-written file) and locks (two writers take turns)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import DataError, HierarcapsError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".joblib", ".pickle", ".pkl", ".pt", ".pth")
"""Files that are pickles (or, as ``.bin`` weights, usually are): the package never loads one."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise HierarcapsError(f"cannot write to {target.parent}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())     # mkstemp makes 0600; the target gets what open() would give
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w", **kwargs: object) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``target`` when the block succeeds."""
    with atomic_path(target) as tmp, open(tmp, mode, **kwargs) as handle:  # type: ignore[call-overload]
        yield handle


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(target, "wb") as handle:
        handle.write(data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOCK_TIMEOUT_S = 120.0


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the block: writers of one folder take turns.

    Waits up to ``timeout`` seconds for another holder, then fails with one line naming ``what`` is busy. The
    operating system releases the lock when its holder dies, so a killed writer never leaves it held.
    """
    import time

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError as exc:
        raise HierarcapsError(f"cannot lock {path}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + timeout
    with open(path, "r+b") as handle:
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                raise HierarcapsError(f"{what} is busy: another process has held {path} for {timeout:.0f} s; "
                                      "try again when it has finished")
            time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(handle)


@contextlib.contextmanager
def directory_lock(folder: str | os.PathLike[str], *, what: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock on a folder itself (on POSIX its own descriptor: no lock file is left beside the
    outputs); elsewhere a ``.hierarcaps.lock`` file in it."""
    import time

    try:
        import fcntl
    except ImportError:                      # Windows
        with exclusive_lock(Path(folder) / ".hierarcaps.lock", what=what, timeout=timeout):
            yield
        return
    descriptor = os.open(folder, os.O_RDONLY)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HierarcapsError(f"{what} is busy: another process has held {folder} for {timeout:.0f} s; "
                                          "try again when it has finished") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)


def _try_lock(handle: IO[bytes]) -> bool:
    try:
        import fcntl
    except ImportError:                      # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: IO[bytes]) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


MAX_INFLATION = 200
"""Decompressed bytes per compressed byte past the first MiB (text compresses about 4-10:1; more is a bomb)."""


def regular_file_size(path: str | os.PathLike[str], *, what: str) -> int:
    """The size of a regular file (links followed); anything else (a folder, a pipe, a device) is refused."""
    import stat

    try:
        info = os.stat(path)
    except OSError as exc:
        raise DataError(exc.strerror or "unreadable", file=str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"not a regular file (a {what} must be one)", file=str(path))
    return info.st_size


def read_bounded(path: str | os.PathLike[str], limit: int, *, what: str) -> bytes:
    """A regular file's bytes, refused before reading when larger than ``limit``; ``.gz`` files are
    decompressed within ``limit`` and at most ``MAX_INFLATION`` to 1."""
    import gzip

    size = regular_file_size(path, what=what)
    if size > limit:
        raise DataError(f"{size} bytes, over the limit of {limit} for a {what}", file=str(path))
    with open(path, "rb") as raw:
        if not str(path).endswith(".gz"):
            return raw.read(limit + 1)
        chunks, produced = [], 0
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as inflated:
                while block := inflated.read(1 << 20):
                    produced += len(block)
                    if produced > limit:
                        raise DataError(f"over {limit} bytes decompressed, the limit for a {what}", file=str(path))
                    if produced > 2**20 and produced > MAX_INFLATION * max(raw.tell(), 1):
                        raise DataError(f"decompresses more than {MAX_INFLATION}:1 (a gzip bomb?)", file=str(path))
                    chunks.append(block)
        except (OSError, EOFError) as exc:
            raise DataError(f"unreadable gzip data ({exc})", file=str(path)) from None
    return b"".join(chunks)


def regular_files(folder: str | os.PathLike[str], pattern: str = "*") -> list[Path]:
    """Regular files below ``folder`` whose names match ``pattern``, sorted; links to folders are not followed
    (no loops) and pipes, sockets and devices are passed over (reading one would block or never end)."""
    import fnmatch
    import stat

    found = []
    for root, _, files in os.walk(folder, followlinks=False):
        for name in fnmatch.filter(files, pattern):
            path = Path(root) / name
            try:
                if stat.S_ISREG(os.stat(path).st_mode):
                    found.append(path)
            except OSError:
                continue
    return sorted(found)


def npz_members(path: str | os.PathLike[str]) -> list[tuple[str, tuple[int, ...], Any, int]]:
    """(name, shape, dtype, compressed bytes) of every array in an ``.npz``, read from the ``.npy`` headers
    alone: sizes can be checked before a single array is inflated."""
    import zipfile

    import numpy as np

    members = []
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist()]
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise DataError(f"the member {twice!r} appears twice (which one a reader takes is left to chance)",
                            file=str(path))
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                    else np.lib.format.read_array_header_2_0
                shape, _, dtype = reader(member)
            members.append((info.filename.removesuffix(".npy"), shape, dtype, info.compress_size))
    return members


def check_npz_inflation(path: str | os.PathLike[str]) -> None:
    """Refuse an ``.npz`` whose arrays would inflate more than ``MAX_INFLATION`` to 1 past the first MiB."""
    import math

    for name, shape, dtype, packed in npz_members(path):
        size = math.prod(shape) * dtype.itemsize
        if size > 2**20 and size > MAX_INFLATION * max(packed, 1):
            raise DataError(f"array {name!r} declares {size} bytes from {packed} compressed (a zip bomb?)",
                            file=str(path))
