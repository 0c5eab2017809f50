"""Where shard work runs: in this process (``local``, the default) or on a Ray cluster (``ray``).

A job is a list of small JSON tasks (``{"shard": 3}``) and a worker: a picklable callable that loads its
models on first use and turns one task into one JSON result, writing its shard's files itself (so a
finished shard is durable the moment its marker exists, under either engine). The local engine calls the
worker in a loop; the Ray engine ships it to an actor pool (Ray Data ``map_batches``, one task per batch),
so each actor loads its models once. Tasks and results cross process boundaries as JSON text only.

Workers compute the same bytes wherever they run: a shard's seed comes from the run's seed and the shard
number, never from the worker that runs it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from .errors import HierarcapsError

Task = dict[str, Any]
Worker = Callable[[Task], Task]


class LocalEngine:
    """Every task in this process, in order."""

    name = "local"

    def map(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool = True,
            gpus: float = 0.0) -> Iterator[Task]:
        from tqdm.auto import tqdm

        for task in tqdm(tasks, desc=desc, unit="shard", disable=not progress):
            yield worker(task)


@dataclasses.dataclass
class RayEngine:
    """Tasks on a Ray cluster through Ray Data, an actor pool per job.

    ``address``: a running cluster (``auto``, ``ray://host:10001``) or None for a local one (or the one this
    process already joined). ``actors``: pool size (default: one per GPU when the job uses GPUs, else one
    per ``cpus_per_actor`` CPUs). GPU jobs give each actor ``gpus_per_actor`` GPUs when the cluster has any.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0

    name = "ray"

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise HierarcapsError("the ray engine needs Ray: pip install 'hierarcaps[distributed]'") from exc
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        return ray

    def pool(self, ray: Any, gpus: float) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor) for a job that can use ``gpus`` GPUs per actor."""
        resources = ray.cluster_resources()
        per_gpu = min(gpus, self.gpus_per_actor) if resources.get("GPU", 0) >= 1 else 0.0
        if self.actors:
            return self.actors, self.cpus_per_actor, per_gpu
        if per_gpu:
            return max(1, int(resources["GPU"] // per_gpu)), self.cpus_per_actor, per_gpu
        return max(1, int(resources.get("CPU", 1) // self.cpus_per_actor)), self.cpus_per_actor, 0.0

    def map(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool = True,
            gpus: float = 0.0) -> Iterator[Task]:
        """Results in task order; a failed job raises a detached error (see ``detached_error``)."""
        stream = self._stream(worker, tasks, desc=desc, progress=progress, gpus=gpus)
        failure, finished = None, False
        try:
            yield from stream
            finished = True
        except Exception as exc:
            failure = detached_error(exc, desc)
        finally:
            if not finished:                # Ray Data frees an unfinished job's actors when its executor is
                del stream                  # collected, and the executor sits in reference cycles
                gc.collect()
        if failure is not None:
            raise failure

    def _stream(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool,
                gpus: float) -> Iterator[Task]:
        from tqdm.auto import tqdm

        if not tasks:
            return
        ray = self._connect()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.raise_original_map_exception = True         # a worker's own error, not Ray Data's wrapper
        actors, cpus, per_gpu = self.pool(ray, gpus)
        dataset = ray.data.from_items([{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        results = dataset.map_batches(_RayActor, fn_constructor_args=(worker,), batch_size=1, batch_format="numpy",
                                      compute=ray.data.ActorPoolStrategy(size=min(actors, len(tasks))),
                                      num_cpus=cpus, num_gpus=per_gpu)
        for row in tqdm(results.iter_rows(), total=len(tasks), desc=f"{desc} (ray)", unit="shard",
                        disable=not progress):
            yield json.loads(row["result"])


def detached_error(exc: Exception, desc: str) -> HierarcapsError:
    """The error a failed Ray job raises, cut loose from Ray's frames.

    Ray Data releases a job's actors by reference counting; a traceback that keeps its frames alive (an
    exception held by a notebook or ``pytest.raises``) would keep the actors and their CPUs, and the next job
    on the cluster would wait for them forever. So the error carries the message, never the frames.
    """
    error = own_error(exc) or HierarcapsError(f"{desc}: the Ray job failed: {exc}")
    error.__traceback__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


def own_error(exc: BaseException | None) -> HierarcapsError | None:
    """The package's own error inside Ray's wrappers, the innermost one (a worker's bad input then reads as it
    would under the local engine)."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HierarcapsError):
            found = exc
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__
    return found


class _RayActor:
    """One actor of a pool: holds a worker (and the models it loads) for every task it is given."""

    def __init__(self, worker: Worker) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.worker = worker

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        return {"result": [json.dumps(self.worker(json.loads(str(task)))) for task in batch["task"]]}


ENGINES: dict[str, Callable[..., Any]] = {"local": LocalEngine, "ray": RayEngine}
"""Engines by the name ``--engine`` takes."""


def make_engine(name: str, **options: Any) -> LocalEngine | RayEngine:
    """An engine by name; options that are None are left at their defaults (the local engine takes none)."""
    if name not in ENGINES:
        raise HierarcapsError(f"unknown engine {name!r} (choose {', '.join(ENGINES)})")
    options = {k: v for k, v in options.items() if v is not None}
    if name == "local":
        return LocalEngine()
    return RayEngine(**options)
