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
import importlib.util
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .errors import HierarcapsError

Task = dict[str, Any]
Worker = Callable[[Task], Task]


class Engine(Protocol):
    """Where shard work runs. ``in_process``: the worker runs in this process (it may share this process's loaded
    models and objects); otherwise it is shipped as a picklable callable and builds its own."""

    name: str
    in_process: bool

    def gpus(self) -> float:
        """GPUs the engine's workers may be given (0 for this process: its own device settings decide)."""

    def map(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool = True,
            gpus: float = 0.0, memory: int = 0) -> Iterator[Task]:
        """One result per task, as the tasks finish; ``gpus``: what one worker can use (more than 1: needs; 0:
        the worker sees no GPU); ``memory``: bytes one worker needs (0: unknown)."""


class LocalEngine:
    """Every task in this process, in order."""

    name = "local"
    in_process = True

    @classmethod
    def from_options(cls, **options: Any) -> LocalEngine:
        return cls()

    def gpus(self) -> float:
        return 0.0

    def map(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool = True,
            gpus: float = 0.0, memory: int = 0) -> Iterator[Task]:
        from tqdm.auto import tqdm

        for task in tqdm(tasks, desc=desc, unit="shard", disable=not progress):
            yield worker(task)


@dataclasses.dataclass
class RayEngine:
    """Tasks on a Ray cluster through Ray Data, an actor pool per job.

    ``address``: a running cluster (``auto``, ``ray://host:10001``) or None for a local one (or the one this
    process already joined). ``actors``: the most actors a job's pool grows to (default: one per GPU when the
    job uses GPUs, else one per ``cpus_per_actor`` CPUs); a pool starts once one actor fits, so a job on a
    busy or autoscaling cluster, or one asking for more actors than the cluster holds, never waits for all of
    them. GPU jobs give each actor ``gpus_per_actor`` GPUs when the cluster has any.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0

    name = "ray"
    in_process = False

    @classmethod
    def from_options(cls, **options: Any) -> RayEngine:
        """The engine the command-line options describe (options left out keep their defaults)."""
        return cls(**{k: v for k, v in options.items() if v is not None})

    def __post_init__(self) -> None:
        """Refuse at once what would fail later, after the driver's own work (a memory's index training)."""
        if importlib.util.find_spec("ray") is None:
            raise HierarcapsError("the ray engine needs Ray: pip install 'hierarcaps[distributed]'")
        if self.address:
            check_reachable(self.address)

    def _connect(self) -> Any:
        import ray

        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
            except ConnectionError as exc:
                raise HierarcapsError(f"no Ray cluster at {self.address!r}: {exc}") from None
        return ray

    def gpus(self) -> float:
        return float(self._connect().cluster_resources().get("GPU", 0.0))

    def pool(self, ray: Any, gpus: float, memory: int = 0) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor) for a job whose workers can use ``gpus`` GPUs each: more than
        one is a need (a tensor-parallel vLLM engine spans that many), granted whatever ``gpus_per_actor`` says;
        one or less is a use, capped by ``gpus_per_actor``. The pool holds as many actors as the cluster's
        GPUs (a GPU job) or CPUs allow, and no more than its memory holds at ``memory`` bytes each."""
        resources = ray.cluster_resources()
        per_gpu = (gpus if gpus > 1 else min(gpus, self.gpus_per_actor)) if resources.get("GPU", 0) >= 1 else 0.0
        if per_gpu > resources.get("GPU", 0) > 0:
            raise HierarcapsError(f"a worker of this stage needs {per_gpu:g} GPUs (tensor_parallel_size); the cluster "
                                  f"has {resources['GPU']:g}")
        if self.actors:
            return self.actors, self.cpus_per_actor, per_gpu
        fits = int(resources["GPU"] // per_gpu) if per_gpu else int(resources.get("CPU", 1) // self.cpus_per_actor)
        if memory and resources.get("memory"):
            fits = min(fits, int(resources["memory"] // memory))
        return max(1, fits), self.cpus_per_actor, per_gpu

    def map(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool = True,
            gpus: float = 0.0, memory: int = 0) -> Iterator[Task]:
        """Results as shards finish. A worker's own error does not stop the job: the other shards finish (and
        stay done), then the error of the earliest failed task is raised, as the local engine would have.

        Why not stop at once: Ray Data frees a job's actors by reference counting, and an aborted job's
        executor can outlive the abort (held by the error's frames or by reference cycles), keeping its actors
        and their CPUs; the next job on the cluster then waits for them forever. A job that runs to its end
        always frees them. Errors that are not the package's own (a bug, a lost node) still abort the job.
        """
        stream = self._stream(worker, tasks, desc=desc, progress=progress, gpus=gpus, memory=memory)
        failure, finished = None, False
        try:
            yield from stream
            finished = True
        except HierarcapsError as exc:
            failure = exc
        except Exception as exc:            # the message only: Ray's frames would hold the executor
            failure = HierarcapsError(f"{desc}: the Ray job failed: {exc}")
        finally:
            if not finished:                # give an aborted job's executor (and so its actors) back now
                del stream
                gc.collect()
        if failure is not None:
            raise failure

    def _stream(self, worker: Worker, tasks: list[Task], *, desc: str, progress: bool,
                gpus: float, memory: int) -> Iterator[Task]:
        from tqdm.auto import tqdm

        if not tasks:
            return
        ray = self._connect()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.raise_original_map_exception = True
        actors, cpus, per_gpu = self.pool(ray, gpus, memory)
        dataset = ray.data.from_items([{"position": n, "task": json.dumps(t)} for n, t in enumerate(tasks)],
                                      override_num_blocks=len(tasks))
        results = dataset.map_batches(_RayActor, fn_constructor_args=(worker, per_gpu > 0), batch_size=1,
                                      batch_format="numpy",
                                      compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(actors, len(tasks))),
                                      num_cpus=cpus, num_gpus=per_gpu, **({"memory": memory} if memory else {}))
        failures = {}
        for row in tqdm(results.iter_rows(), total=len(tasks), desc=f"{desc} (ray)", unit="shard",
                        disable=not progress):
            result = json.loads(row["result"])
            if ERROR_KEY in result:
                failures[int(row["position"])] = result[ERROR_KEY]
            else:
                yield result
        if failures:
            raise rebuilt_error(failures[min(failures)])


ERROR_KEY = "__hierarcaps_error__"
"""The key of a result that carries a worker's error instead of its output."""


def portable_error(error: HierarcapsError) -> dict[str, Any]:
    """A package error as JSON: its class name, message and (JSON-safe) attributes."""
    attributes = {k: v for k, v in vars(error).items() if isinstance(v, str | int | float | bool | None)}
    return {"type": type(error).__name__, "message": str(error), "attributes": attributes}


def rebuilt_error(payload: dict[str, Any]) -> HierarcapsError:
    """The error ``portable_error`` described, of the same class (one of ``errors``'s) where it is known."""
    from . import errors

    kind = getattr(errors, str(payload.get("type")), HierarcapsError)
    if not (isinstance(kind, type) and issubclass(kind, HierarcapsError)):
        kind = HierarcapsError
    error = kind.__new__(kind)
    Exception.__init__(error, payload["message"])
    vars(error).update(payload.get("attributes", {}))
    return error


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a cluster address that nothing answers at (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not port.isdigit():
        return                                         # Ray finds or refuses these itself, at once
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise HierarcapsError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                              "`ray start --head`, or leave out --address for a cluster on this machine") from None


class _RayActor:
    """One actor of a pool: holds a worker (and the models it loads) for every task it is given. An actor given
    GPUs sees those alone (Ray sets its CUDA_VISIBLE_DEVICES); one given none sees none (Ray would leave it every
    GPU of its node, and a model placed on ``cuda:0`` by each such actor would pile onto one GPU)."""

    def __init__(self, worker: Worker, has_gpus: bool = False) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if not has_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        self.worker = worker

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        return {"position": list(batch["position"]),
                "result": [self.run(json.loads(str(task))) for task in batch["task"]]}

    def run(self, task: Task) -> str:
        try:
            return json.dumps(self.worker(task))
        except HierarcapsError as exc:
            return json.dumps({ERROR_KEY: portable_error(exc)})


ENGINES: dict[str, Any] = {"local": LocalEngine, "ray": RayEngine}
"""Engines by the name ``--engine`` takes: adding one here is all the command line and the stages need."""


def make_engine(name: str, **options: Any) -> Engine:
    """An engine by name, built from command-line options (those that are None keep their defaults)."""
    if name not in ENGINES:
        raise HierarcapsError(f"unknown engine {name!r} (choose {', '.join(ENGINES)})")
    return ENGINES[name].from_options(**options)
