"""Talking to a Label Studio server: project set-up, idempotent task import, export, with clear errors.

The API token is passed to the SDK only; no message, log line or exception text of this module contains it.
Imports are keyed by hierarchy id: before each batch (and after any failed attempt) the ids already on the
server are re-read, so a retry after a network error mid-import can neither duplicate nor lose a task.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..data.records import Hierarchy
from ..errors import HierarcapsError

T = TypeVar("T")
DEFAULT_URL = "http://localhost:8080"


def read_label_config(path: str | os.PathLike[str] | None) -> str:
    """The labeling config XML (default: the one shipped inside the package, so an installed wheel works)."""
    if not path:
        from importlib import resources

        return resources.files("hierarcaps.annotation").joinpath("assets/labeling_config.xml").read_text("utf-8")
    path = Path(path)
    if not path.exists():
        raise HierarcapsError(f"labeling config {path} not found; pass --label-config")
    return path.read_text(encoding="utf-8")


def _same_config(a: str, b: str) -> bool:
    squash = lambda xml: re.sub(r">\s+<", "><", xml.strip())  # noqa: E731
    return squash(a) == squash(b)


def _transient(exc: Exception) -> bool:
    """Network failures and server-side errors are worth a retry; client errors (4xx) are not."""
    import httpx

    status = getattr(exc, "status_code", None)
    return isinstance(exc, httpx.TransportError) or (status is not None and status >= 500)


def _explain(exc: Exception, url: str, action: str) -> HierarcapsError:
    import httpx

    status = getattr(exc, "status_code", None)
    if isinstance(exc, httpx.TransportError):
        return HierarcapsError(f"cannot reach Label Studio at {url} while trying to {action} "
                               f"({type(exc).__name__}); is the server running?")
    if status == 401:
        return HierarcapsError(f"Label Studio at {url} refused the API token (401) while trying to {action}; check "
                               "--token / LABEL_STUDIO_API_KEY (a legacy token needs "
                               "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)")
    body = getattr(exc, "body", None)
    detail = json.dumps(body)[:400] if body is not None else type(exc).__name__
    return HierarcapsError(f"Label Studio at {url} answered {status} while trying to {action}: {detail}")


class Server:
    """One Label Studio server and the calls this package makes to it."""

    def __init__(self, url: str | None = None, token: str | None = None, *, retries: int = 3,
                 backoff: float = 1.0, timeout: float = 60.0) -> None:
        from label_studio_sdk import LabelStudio

        self.url = (url or os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("LABEL_STUDIO_API_KEY")
        if not token:
            raise HierarcapsError("no Label Studio API token: pass --token or set LABEL_STUDIO_API_KEY")
        self.retries, self.backoff = retries, backoff
        self.client = LabelStudio(base_url=self.url, api_key=token, timeout=timeout)
        self.call(lambda: self.client.users.whoami(), "check the token")

    def call(self, fn: Callable[[], T], action: str, *, retry: bool = True) -> T:
        """Run one API call; retry transient failures with backoff; explain the final failure."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return fn()
            except Exception as exc:  # the SDK raises httpx and ApiError types; explain them all alike
                if attempt + 1 < attempts and _transient(exc):
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                raise _explain(exc, self.url, action) from None
        raise AssertionError("unreachable")

    # -- projects -----------------------------------------------------------------------------------------
    def find_project(self, title: str) -> Any | None:
        projects = self.call(lambda: list(self.client.projects.list(title=title)), "list projects")
        return next((p for p in projects if p.title == title), None)

    def ensure_project(self, title: str, label_config: str, overlap: int = 1) -> Any:
        """The project of that title, created with this config if absent; refuses one with another config.
        ``overlap`` annotators see every task (agreement statistics need 2 or more)."""
        project = self.find_project(title)
        if project is None:
            return self.call(lambda: self.client.projects.create(
                title=title, label_config=label_config, maximum_annotations=overlap, overlap_cohort_percentage=100),
                f"create project {title!r} (the server validates the labeling config)", retry=False)
        if not _same_config(project.label_config or "", label_config):
            raise HierarcapsError(f"project {title!r} (id {project.id}) on {self.url} has a different labeling config; "
                                  "use another --project name or update its config in Label Studio")
        self.call(lambda: self.client.projects.validate_label_config(project.id, label_config=label_config),
                  "validate the labeling config")
        if project.maximum_annotations != overlap:
            self.call(lambda: self.client.projects.update(project.id, maximum_annotations=overlap,
                                                          overlap_cohort_percentage=100),
                      f"set {overlap} annotation(s) per task")
        return project

    def ensure_local_storage(self, project_id: int, folder: Path) -> None:
        """Let Label Studio serve local images from ``folder`` (it must lie under its document root)."""
        storages = self.call(lambda: list(self.client.import_storage.local.list(project=project_id)),
                             "list local storages")
        if not any(Path(s.path) == folder for s in storages):
            self.call(lambda: self.client.import_storage.local.create(
                project=project_id, path=str(folder), use_blob_urls=True, title="hierarcaps images"),
                f"add local storage {folder}", retry=False)

    # -- tasks ----------------------------------------------------------------------------------------------
    def hierarchy_ids(self, project_id: int) -> set[str]:
        tasks = self.call(lambda: list(self.client.tasks.list(project=project_id, fields="all")), "list tasks")
        return {str(t.data.get("hierarchy_id")) for t in tasks}

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]], batch_size: int,
                     progress: bool = True) -> dict[str, int]:
        """Import the tasks whose hierarchy id is not on the server yet, in batches; safe to re-run."""
        from tqdm.auto import tqdm

        on_server = self.hierarchy_ids(project_id)
        todo = [t for t in tasks if t["data"]["hierarchy_id"] not in on_server]
        created = 0
        with tqdm(total=len(todo), desc="Importing tasks", unit="task", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                created += self._import_batch(project_id, batch)
                bar.update(len(batch))
        return {"created": created, "already_there": len(tasks) - len(todo)}

    def _import_batch(self, project_id: int, batch: list[dict[str, Any]]) -> int:
        for attempt in range(self.retries + 1):
            try:
                self.client.projects.import_tasks(project_id, request=batch, return_task_ids=True)
                return len(batch)
            except Exception as exc:
                if attempt == self.retries or not _transient(exc):
                    raise _explain(exc, self.url, "import tasks") from None
                time.sleep(self.backoff * 2 ** attempt)
                # the failed call may have reached the server: import only what is still missing
                on_server = self.hierarchy_ids(project_id)
                done = [t for t in batch if t["data"]["hierarchy_id"] in on_server]
                batch = [t for t in batch if t["data"]["hierarchy_id"] not in on_server]
                if not batch:
                    return len(done)
        raise AssertionError("unreachable")

    def export(self, project_id: int) -> list[dict[str, Any]]:
        """The project's full JSON export; a truncated download is retried, never half-used."""
        for attempt in range(self.retries + 1):
            raw = self.call(lambda: b"".join(self.client.projects.exports.download_sync(
                project_id, export_type="JSON", download_all_tasks=True)), "export annotations")
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                if attempt == self.retries:
                    raise HierarcapsError(f"the export from {self.url} was incomplete ({len(raw)} bytes) after "
                                          f"{self.retries + 1} attempts; nothing was written") from None
                time.sleep(self.backoff * 2 ** attempt)
        raise AssertionError("unreachable")


def image_reference(record: Hierarchy, image_dir: Path | None, document_root: Path | None) -> str:
    """What the task shows: a local file served by Label Studio when one is there, else the image URL."""
    if image_dir is not None and record.image_file:
        path = image_dir / record.image_file
        if path.exists():
            if document_root is None:
                raise HierarcapsError("local images need --document-root (Label Studio's "
                                      "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
            try:
                relative = path.relative_to(document_root)
            except ValueError:
                raise HierarcapsError(f"{path} is not under the document root {document_root}") from None
            return "/data/local-files/?d=" + urllib.parse.quote(relative.as_posix())
    if record.image_url:
        return record.image_url
    raise HierarcapsError(f"hierarchy {record.id!r} has no image: neither a local file nor a URL")


def task_for(record: Hierarchy, image: str, generator: str) -> dict[str, Any]:
    """A task: the image, the caption, the generated tiers (as data and as the prediction to edit), negatives."""
    negative = record.negative or ("",) * len(record.positive)
    data = {"hierarchy_id": record.id, "image": image, "image_url": record.image_url or "",
            "caption": record.positive[-1], "generator": generator,
            **{f"original_{k}": tier for k, tier in enumerate(record.positive, start=1)},
            **{f"negative_{k}": tier for k, tier in enumerate(negative, start=1)}}
    result = [{"from_name": f"tier_{k}", "to_name": "caption", "type": "textarea", "value": {"text": [tier]}}
              for k, tier in enumerate(record.positive, start=1)]
    return {"data": data, "predictions": [{"model_version": generator, "result": result}]}
