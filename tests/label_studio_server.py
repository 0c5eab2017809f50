"""Start a real Label Studio server for the tests (its own environment; see .ci/run), stop it by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hierarcaps0test0token0000000000000000000"   # a preset legacy token, as the server allows


def label_studio_executable() -> str | None:
    """$HIERARCAPS_LABEL_STUDIO, or the environment .ci/run builds beside the repository."""
    candidates = [os.environ.get("HIERARCAPS_LABEL_STUDIO"), str(REPO / ".venv-labelstudio" / "bin" / "label-studio")]
    return next((c for c in candidates if c and Path(c).exists()), None) or shutil.which("label-studio")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(executable: str, data_dir: Path, document_root: Path, timeout: float = 240) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root)}
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 (open for the server's whole life)
    process = subprocess.Popen(
        [executable, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port), "--username",
         "admin@hierarcaps.test", "--password", "hierarcaps-test", "--user-token", TOKEN],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Label Studio exited: {(data_dir / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("Label Studio did not answer /api/version in time") from None
                time.sleep(1)
        yield url
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """Stop the server's whole process group; one that already died (a failed start) has nothing to stop."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
