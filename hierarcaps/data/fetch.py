"""Downloads with retries, checksums and atomic writes, into a user cache."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from .._io import atomic_open
from ..errors import HierarcapsError

USER_AGENT = "hierarcaps (+https://github.com/hierarcaps)"


def cache_dir() -> Path:
    """Root of the user cache: $HIERARCAPS_CACHE, else $XDG_CACHE_HOME/hierarcaps, else ~/.cache/hierarcaps."""
    if env := os.environ.get("HIERARCAPS_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hierarcaps"


def is_url(path: str | os.PathLike[str]) -> bool:
    return str(path).startswith(("http://", "https://"))


class ChecksumMismatch(HierarcapsError):
    """Downloaded or local bytes that do not match the shipped SHA-256."""


class SourceUnreachable(HierarcapsError):
    """A failure that retrying cannot fix (no DNS, connection refused, 4xx): the whole job stops at once."""


MAX_DOWNLOAD_BYTES = 2**30
"""One downloaded file (images are tens of KB; the official training file tens of MB)."""


def _permanent(exc: Exception) -> str | None:
    """Why ``exc`` will not go away by retrying, or None for a transient failure."""
    if isinstance(exc, urllib.error.HTTPError):
        return None if exc.code >= 500 or exc.code == 429 else f"HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve (no network or DNS?)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return None


def _read_bounded(response, url: str) -> bytes:
    data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise SourceUnreachable(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes; refusing the download")
    return data


def download(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None, retries: int = 3,
             timeout: float = 30.0, backoff: float = 0.5) -> Path:
    """Fetch ``url`` into ``dest`` atomically, verifying ``sha256`` when given.

    Transient failures (timeouts, resets, HTTP 5xx/429) are retried with exponential back-off; a checksum
    mismatch is retried too (a truncated transfer looks like one) and then raised. Failures that retrying
    cannot fix (DNS, refused connection, HTTP 4xx) raise :class:`SourceUnreachable` at once.
    """
    dest = Path(dest)
    last_error: Exception | None = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = _read_bounded(response, url)
        except (urllib.error.URLError, OSError) as exc:
            if (why := _permanent(exc)) is not None:
                raise SourceUnreachable(f"cannot download {url}: {why}") from None
            last_error = exc
            continue
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            last_error = ChecksumMismatch(f"{url}: SHA-256 {digest} does not match the manifest ({sha256})")
            continue
        with atomic_open(dest, "wb") as handle:
            handle.write(data)
        return dest
    if isinstance(last_error, ChecksumMismatch):
        raise last_error
    raise HierarcapsError(f"cannot download {url} after {retries} attempt(s): {last_error}")


def cached_download(url: str, *, subdir: str = "files", sha256: str | None = None) -> Path:
    """Download ``url`` once into the cache (keyed by URL) and return the local path."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    dest = cache_dir() / subdir / key / Path(url.split("?")[0]).name
    if not dest.exists():
        download(url, dest, sha256=sha256)
    return dest
