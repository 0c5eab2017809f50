"""Downloads behind proxies: a refusing proxy ends the job in seconds with one line, a stalling one is retried
with back-off and then given up on, a serving one delivers verified files, and a stopped job resumes from its
cache without fetching anything twice."""

from __future__ import annotations

import http.client
import http.server
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from measured_cli import assert_one_line_failure

from hierarcaps.data import load_official
from hierarcaps.data.images import ImageStore
from hierarcaps.errors import ImagesUnavailableError

PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                   "ALL_PROXY")


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """A forward proxy whose behaviour the test picks: ``refuse`` (403 to CONNECT and GET), ``stall`` (reads
    the request, never answers) or ``serve`` (forwards plain-HTTP GETs to their host)."""

    mode = "serve"
    requests: list[str]
    release: threading.Event

    def do_CONNECT(self) -> None:
        self.requests.append(f"CONNECT {self.path}")
        self.send_error(403, "Forbidden")

    def do_GET(self) -> None:
        self.requests.append(f"GET {self.path}")
        if self.mode == "refuse":
            self.send_error(403, "Forbidden")
        elif self.mode == "stall":
            self.release.wait(30)
        else:
            self.forward()

    def forward(self) -> None:
        target = urllib.parse.urlsplit(self.path)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        connection.request("GET", target.path)
        answer = connection.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[ProxyHandler]]:
    """A local proxy that every download of this process and its children goes through."""
    handler = type("Proxy", (ProxyHandler,), {"requests": [], "release": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"http://127.0.0.1:{server.server_address[1]}"
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", address)
    monkeypatch.setenv("https_proxy", address)
    yield handler
    handler.release.set()
    server.shutdown()


@pytest.fixture
def image_host(tmp_path: Path, test_image_dir: Path) -> Iterator[str]:
    """A plain HTTP server with the first 12 test images (the proxy's upstream)."""
    root = tmp_path / "host"
    root.mkdir()
    for record in load_official("test")[:12]:
        shutil.copy(test_image_dir / record.image_file, root / record.image_file)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Quiet(*a, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_a_refusing_proxy_ends_the_download_in_seconds_with_one_line(proxy: type[ProxyHandler], tmp_path: Path,
                                                                    shared_dir: Path) -> None:
    proxy.mode = "refuse"
    line = assert_one_line_failure(["download"], tmp_path, "the proxy refused the tunnel (403 Forbidden)")
    assert "raw.githubusercontent.com" in line and "through proxy 127.0.0.1" in line and "--image-dir" in line
    assert len(proxy.requests) < 40          # a few per worker in flight, not 1,000 images x 3 attempts


def test_a_stalling_proxy_is_retried_with_back_off_then_given_up(proxy: type[ProxyHandler], image_host: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                test_image_dir: Path) -> None:
    from hierarcaps.data import images as images_module

    proxy.mode = "stall"
    monkeypatch.setattr(images_module, "download", _quick(images_module.download))
    records = load_official("test")[:12]
    with pytest.raises(ImagesUnavailableError, match=r"timed out \(3 files in a row\).*0 of 12 downloaded"):
        ImageStore(download=True, mirror=image_host, workers=2).resolve(records, progress=False)
    attempts = [r for r in proxy.requests if r.startswith("GET")]
    assert len(set(attempts)) < len(attempts) < 12 * 3    # each file retried, but not every file tried


def test_a_serving_proxy_delivers_and_a_stopped_job_resumes_from_its_cache(proxy: type[ProxyHandler],
                                                                          image_host: str, test_image_dir: Path,
                                                                          isolated_cache: Path) -> None:
    records = load_official("test")[:12]
    ImageStore(download=True, mirror=image_host, workers=1).resolve(records[:5], progress=False)
    assert len(proxy.requests) == 5
    proxy.mode = "refuse"                    # the network goes away: the job stops, the cache stays valid
    with pytest.raises(ImagesUnavailableError, match=r"HTTP 403 Forbidden \(3 files in a row\)"):
        ImageStore(download=True, mirror=image_host, workers=1).resolve(records, progress=False)
    proxy.mode, proxy.requests[:] = "serve", []
    paths = ImageStore(download=True, mirror=image_host, workers=1).resolve(records, progress=False)
    assert sorted(r.split("/")[-1] for r in proxy.requests) == sorted(r.image_file for r in records[5:])
    assert all(paths[r.image_file].read_bytes() == (test_image_dir / r.image_file).read_bytes() for r in records)


def test_one_missing_file_among_good_ones_does_not_stop_the_job(image_host: str, test_image_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.data.records import Hierarchy

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    records = load_official("test")[:6]
    gone = Hierarchy(**{**records[2].to_dict(), "image_file": "not-there.jpg"})
    with pytest.raises(ImagesUnavailableError, match=r"1 of 6 images are missing.*HTTP 404"):
        ImageStore(download=True, mirror=image_host, workers=1).resolve([*records[:2], gone, *records[3:]],
                                                                         progress=False)
    assert ImageStore(download=False).resolve(records[:2] + records[3:], progress=False)   # the rest were kept


def _quick(download):
    """``download`` with a short timeout and back-off, so a stall costs a test seconds, not minutes."""
    return lambda *args, **kwargs: download(*args, **{**kwargs, "timeout": 0.5, "backoff": 0.05})
