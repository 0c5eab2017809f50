"""Downloads with retries, checksums and atomic writes, into a user cache."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
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


MAX_DOWNLOAD_BYTES = 2**30
"""One downloaded file (images are tens of KB; the official training file tens of MB)."""


def failure_cause(exc: Exception) -> tuple[str, bool]:
    """A short cause for a failed request, and whether retrying cannot fix it (refused tunnel, DNS, refused
    connection, bad certificate, HTTP 4xx other than 429)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}", not (exc.code >= 500 or exc.code == 429)
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve (no network or DNS?)", True
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"certificate verification failed ({reason.verify_message})", True
    if isinstance(reason, OSError) and str(reason).startswith("Tunnel connection failed"):
        return f"the proxy refused the tunnel ({str(reason).partition(': ')[2].strip()})", True
    if isinstance(reason, TimeoutError | socket.timeout):
        return "timed out", False
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__, False


def host_of(url: str) -> str:
    """The host a URL names, with the proxy that carries it when one applies (what a user must check)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return f"{parts.netloc} (through proxy {urllib.parse.urlsplit(proxy).netloc or proxy})"
    return parts.netloc


class DownloadFailed(HierarcapsError):
    """One file's download failed; ``cause`` and ``permanent`` say how (see :func:`failure_cause`)."""

    def __init__(self, message: str, *, url: str, cause: str, permanent: bool) -> None:
        super().__init__(message)
        self.url, self.cause, self.permanent = url, cause, permanent


class SourceUnreachable(DownloadFailed):
    """A failure that retrying cannot fix (refused tunnel, no DNS, connection refused, 4xx)."""


class Breaker:
    """Stops a batch of downloads once a host fails the same way ``limit`` times in a row (no success between):
    a proxy that refuses everything ends the job in seconds instead of after thousands of requests, while one
    missing file among many does not."""

    def __init__(self, limit: int = 3) -> None:
        import threading

        self.limit = limit
        self.streaks: dict[str, tuple[str, int]] = {}
        self.tripped: str | None = None
        self._lock = threading.Lock()

    def succeeded(self, url: str) -> None:
        with self._lock:
            self.streaks.pop(host_of(url), None)

    def failed(self, error: DownloadFailed) -> None:
        """Count ``error``; trips (sets :attr:`tripped` to a one-line reason) on the limit-th identical one."""
        host = host_of(error.url)
        with self._lock:
            cause, count = self.streaks.get(host, (error.cause, 0))
            count = count + 1 if cause == error.cause else 1
            self.streaks[host] = (error.cause, count)
            if count >= self.limit and self.tripped is None:
                self.tripped = f"cannot download from {host}: {error.cause} ({count} files in a row)"


def _read_bounded(response, url: str) -> bytes:
    data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise SourceUnreachable(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes; refusing the download", url=url,
                                cause="file too large", permanent=True)
    return data


def download(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None, retries: int = 3,
             timeout: float = 30.0, backoff: float = 0.5) -> Path:
    """Fetch ``url`` into ``dest`` atomically, verifying ``sha256`` when given.

    Transient failures (timeouts, resets, HTTP 5xx/429) are retried with exponential back-off, then raised as
    :class:`DownloadFailed`; a checksum mismatch is retried too (a truncated transfer looks like one) and then
    raised. Failures that retrying cannot fix raise :class:`SourceUnreachable` at once.
    """
    dest = Path(dest)
    mismatch: ChecksumMismatch | None = None
    cause = "no attempt"
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.build_opener().open(request, timeout=timeout) as response:  # proxies as set now
                data = _read_bounded(response, url)
        except (OSError, http.client.HTTPException) as exc:     # URLError is an OSError
            cause, permanent = failure_cause(exc)
            if permanent:
                raise SourceUnreachable(f"cannot download {url}: {cause}", url=url, cause=cause,
                                        permanent=True) from None
            continue
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            mismatch = ChecksumMismatch(f"{url}: SHA-256 {digest} does not match the manifest ({sha256})")
            continue
        with atomic_open(dest, "wb") as handle:
            handle.write(data)
        return dest
    if mismatch is not None:
        raise mismatch
    raise DownloadFailed(f"cannot download {url} after {retries} attempt(s): {cause}", url=url, cause=cause,
                         permanent=False)


def cached_download(url: str, *, subdir: str = "files", sha256: str | None = None) -> Path:
    """Download ``url`` once into the cache (keyed by URL) and return the local path."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    dest = cache_dir() / subdir / key / Path(url.split("?")[0]).name
    if not dest.exists():
        download(url, dest, sha256=sha256)
    return dest
