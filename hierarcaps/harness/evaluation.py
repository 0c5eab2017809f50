"""Score a model on HierarCaps: embed each distinct text and image once (cached), then compute every metric.

The per-item loop of the reference implementation embeds one image and one row of 4 captions per forward
pass; here texts go in length-sorted batches, images are decoded in DataLoader workers (where cores
allow), and duplicate strings are embedded once, so the run costs about one batched forward pass over
the distinct inputs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_open
from ..configs import check_fields
from ..data.csvio import read_hierarchies
from ..data.images import DEFAULT_IMAGE_SOURCE, ImageStore, image_recipe
from ..data.official import load_official
from ..data.records import Hierarchy, content_checksum
from ..errors import DataError
from ..fields import bounded
from ..metrics.baselines import all_baselines
from ..metrics.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL, summarise_all
from ..metrics.hierarchy import DEFAULT_STEPS
from ..metrics.scoring import EmbeddedBenchmark, per_unit_metrics
from ..models.base import Encoder
from ..models.cache import EmbeddingCache, cache_key, checksum_strings
from ..results import Dataset, Result
from ..textsafe import slug


def default_workers() -> int:
    """Image decoding processes: one per core, 16 at most (on CPU they run while the model waits)."""
    return min(16, os.cpu_count() or 1)


@dataclasses.dataclass
class EvalOptions:
    """Knobs of an evaluation run; the protocol ones (steps, root text) are recorded in the result."""

    split: str = "test"
    data: str | None = None
    image_dir: str | None = None
    download: bool = False
    image_source: str = DEFAULT_IMAGE_SOURCE
    text_only: bool = False
    text_batch_size: int = bounded(256, low=1, high=1 << 20)
    image_batch_size: int = bounded(64, low=1, high=1 << 20)
    workers: int = bounded(factory=default_workers, low=0, high=256)
    steps: int = bounded(DEFAULT_STEPS, low=1, high=100_000)
    resamples: int = bounded(DEFAULT_RESAMPLES, low=1, high=1_000_000)
    seed: int = bounded(DEFAULT_SEED, low=0, high=2**32 - 1)
    cache: bool = True
    cache_dir: str | None = None
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)

    def image_store(self) -> ImageStore:
        return ImageStore(self.image_dir, download=self.download, source=self.image_source)


@dataclasses.dataclass
class Embedded:
    """A benchmark's embeddings plus what they came from."""

    bench: EmbeddedBenchmark
    records: list[Hierarchy]
    image_files: list[str]
    timings: dict[str, float]
    cache_hits: int


def benchmark_records(options: EvalOptions) -> list[Hierarchy]:
    """The hierarchies to score: a file's (``data``) or a shipped split's; an empty file is refused."""
    if not options.data:
        return load_official(options.split)
    records = read_hierarchies(options.data, split=Path(options.data).name)
    if not records:
        raise DataError("no hierarchies to score (the file has a header and no rows)", file=options.data)
    return records


def embed_benchmark(encoder: Encoder, records: Sequence[Hierarchy], options: EvalOptions) -> Embedded:
    """Embed each distinct image, the root and each distinct tier text of ``records`` (cache first).

    Images go first: a model loaded lazily then decodes them while its weights load. A lazy model's load
    time is reported as ``load_model_s``, not as embedding time, so the rates describe the embedding itself.
    """
    cache = EmbeddingCache(options.cache_dir, enabled=options.cache)
    fingerprint, recipe = encoder.fingerprint(), encoder.embedding_recipe()
    texts = np.array([r.positive for r in records], dtype=object)
    distinct, inverse = np.unique(texts.astype(str), return_inverse=True)
    timings: dict[str, float] = {}
    loaded_before = encoder.load_seconds

    image_emb = row_image = None
    image_files: list[str] = []
    if encoder.has_images and not options.text_only:
        start, loading = time.perf_counter(), encoder.load_seconds
        store = options.image_store()
        paths = store.resolve(records, progress=options.progress)
        image_files = list(dict.fromkeys(r.image_file for r in records))
        index = {name: i for i, name in enumerate(image_files)}
        row_image = np.array([index[r.image_file] for r in records])
        ordered = [paths[name] for name in image_files]
        signature = [f"{name}:{store.digest(path)}" for name, path in zip(image_files, ordered)]
        key = cache_key(fingerprint, recipe, "image", checksum_strings(signature))
        image_emb = cache.get_or_compute(key, lambda: encoder.encode_image(
            ordered, batch_size=options.image_batch_size, workers=options.workers, progress=options.progress))
        timings["embed_images_s"] = time.perf_counter() - start - (encoder.load_seconds - loading)

    start, loading = time.perf_counter(), encoder.load_seconds
    geometry = encoder.geometry()
    inputs = [geometry.root_text, *distinct.tolist()]
    key = cache_key(fingerprint, recipe, "text", checksum_strings(inputs))
    text_vectors = cache.get_or_compute(key, lambda: encoder.encode_text(
        inputs, batch_size=options.text_batch_size, progress=options.progress))
    timings["embed_texts_s"] = time.perf_counter() - start - (encoder.load_seconds - loading)
    timings["load_model_s"] = encoder.load_seconds - loaded_before
    root, distinct_emb = text_vectors[0], text_vectors[1:]

    text_emb = distinct_emb[inverse.reshape(texts.shape)]
    bench = EmbeddedBenchmark(texts, text_emb, root, image_emb, row_image,
                              text_radii=geometry.distance_to_root(text_emb, root), similarity=geometry.similarity)
    return Embedded(bench, list(records), image_files, timings, cache.hits)


def environment(options: EvalOptions) -> dict[str, Any]:
    """Where the embeddings were computed; torch is not imported just to say so (a cached run never loads it)."""
    import importlib.metadata

    from ..models.torch_utils import pick_device

    torch = sys.modules.get("torch")
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count(), "torch": importlib.metadata.version("torch")}
    if torch is not None:
        env["device"] = pick_device(options.device)
        env["threads"] = torch.get_num_threads()
    return env


def resident_peak_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM, because ``ru_maxrss`` carries over the peak of
    whatever process started this one (a notebook or script that runs the CLI would be counted)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return next(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process, and of the GPU's allocator where the run used one."""
    peaks = {"peak_memory_mb": resident_peak_mb()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        peaks["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def evaluate(model: str | Encoder, options: EvalOptions | None = None) -> Result:
    """Score ``model`` (a spec string or an Encoder) and return its typed result (``result.metrics["d_corr"].value``;
    ``result.to_dict()`` is the JSON document).

    Process-wide settings are left to the caller: the ``hierarcaps`` command has glibc keep freed memory
    (``keep_freed_memory``), which makes CPU forward passes faster; a library user may call it too.
    """
    from ..models.registry import load_encoder

    options = options or EvalOptions()
    started = time.perf_counter()
    encoder = load_encoder(model, device=options.device, lazy=True) if isinstance(model, str) else model
    load_s = time.perf_counter() - started
    records = benchmark_records(options)
    embedded = embed_benchmark(encoder, records, options)

    start = time.perf_counter()
    per_unit, _ = per_unit_metrics(embedded.bench, steps=options.steps)
    metrics = summarise_all(per_unit, resamples=options.resamples, seed=options.seed)
    metrics_s = time.perf_counter() - start
    bench = embedded.bench
    baselines = all_baselines(bench.texts, bench.row_image, len(embedded.image_files),
                              dim=bench.root.shape[0], resamples=options.resamples, seed=options.seed)
    timings = {**embedded.timings, "load_model_s": load_s + embedded.timings["load_model_s"], "metrics_s": metrics_s,
               "total_s": time.perf_counter() - started, **peak_memory(),
               "embedding_cache_hits": embedded.cache_hits}
    if embedded.cache_hits == 0:
        distinct_texts = len(np.unique(bench.texts.astype(str))) + 1
        timings["texts_per_s"] = distinct_texts / max(timings["embed_texts_s"], 1e-9)
        if embedded.image_files:
            timings["images_per_s"] = len(embedded.image_files) / max(timings["embed_images_s"], 1e-9)
    return Result.scored(
        encoder.metadata(), metrics,
        Dataset(split=options.data or options.split, rows=len(records), checksum=content_checksum(records),
                images=len(embedded.image_files),
                image_recipe=image_recipe(options.image_source) if embedded.image_files else None),
        steps=options.steps, root_text=encoder.geometry().root_text, resamples=options.resamples, seed=options.seed,
        level=LEVEL, version=__version__, baselines=baselines,
        extra={"environment": environment(options),
               "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "timings": timings})


def result_path(result: Result, out_dir: str | os.PathLike[str]) -> Path:
    """``<out>/<model slug>-<weights hash>/<split>.<protocol>[.<image recipe>].json``: one file per model, weights,
    split and (when not the protocol's thumbnails) image recipe, so results on other pixels never overwrite."""
    fingerprint = (result.model.fingerprint or "").split(":")[-1][:10]
    split = slug(Path(result.dataset.split).name) or "split"
    folder = f"{slug(Path(result.model.name).name) or 'model'}-{fingerprint}"
    recipe = result.dataset.image_recipe or image_recipe(DEFAULT_IMAGE_SOURCE)
    suffix = "" if recipe == image_recipe(DEFAULT_IMAGE_SOURCE) else f".{slug(recipe)}"
    return Path(out_dir) / folder / f"{split}.{result.protocol.name}{suffix}.json"


def save_result(result: Result, out_dir: str | os.PathLike[str]) -> Path:
    """Write a result document as every reader here reads it (strict JSON: a non-finite number is refused)."""
    from .. import jsonfile

    path = result_path(result, out_dir)
    text = jsonfile.dumps(result.to_dict())
    with atomic_open(path, "w") as handle:
        handle.write(text)
    return path
