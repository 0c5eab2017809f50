"""The stages of a generation run, each declared once: its folder, what it reads, what it does, the models it
loads and so what one of its workers needs.

A shard stage reads its source stage's shard and writes its own, on the run's engine; a driver stage runs in
the command's process. What a worker needs follows from the models it loads (:func:`needs`): a stage whose
models run on a GPU asks for one GPU per worker (one worker per GPU, its models on that GPU), a vLLM engine for
its tensor-parallel size; a stage whose models run on CPUs asks for none, and its workers see no GPU. Memory per
worker is the weights of its models, where they are on disk; the engine sizes its pool from both.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import GenerationConfig
from .models import MODEL_ROLES

Runner = Any
"""A ``runner.Runner`` (named here without importing it: the runner imports this module)."""
Row = dict[str, Any]
ShardTransform = Callable[[Runner, list[Row], int, int], list[Row]]


@dataclasses.dataclass(frozen=True)
class Needs:
    """What one worker of a stage asks of an engine: GPUs (a use of at most one, or a tensor-parallel need of
    several) and bytes of memory (0: unknown)."""

    gpus: float = 0.0
    memory: int = 0


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: the folder it writes; a shard stage's source stage and its batch transform
    (runner, rows, shard seed, shard) -> rows, or a driver stage's ``run``; ``models``, the models its
    workers load (which decide its GPU and memory needs); and whether it ``teaches``."""

    name: str
    folder: str
    source: str = ""
    transform: ShardTransform | None = None
    run: Callable[[Runner], None] | None = None
    models: tuple[str, ...] = ()
    teaches: bool = False
    """Its accepted rows are the LLM's judged chains: what the student learns from and what the LLM's captions
    are built from (and what ``--rethreshold`` re-decides)."""
    seed_key: int = -1
    """Its shards' seeds derive from this number, fixed per stage so that adding a stage changes no other
    stage's seeds (the first seven keep the numbers they always had: their positions)."""

    def __post_init__(self) -> None:
        if not set(self.models) <= set(MODEL_ROLES):
            raise ValueError(f"stage {self.name}: models {self.models} are not among {MODEL_ROLES}")
        if self.seed_key < 0:
            object.__setattr__(self, "seed_key", zlib.crc32(self.name.encode()))


def on_gpus(config: GenerationConfig, cluster_gpus: float) -> bool:
    """Whether the run's torch models go on GPUs: ``device`` says a GPU, or ``auto`` on a cluster that has some."""
    return config.device.startswith("cuda") or (config.device == "auto" and cluster_gpus >= 1)


def needs(stage: Stage, config: GenerationConfig, cluster_gpus: float, student: Path | None = None) -> Needs:
    """What one worker of ``stage`` needs on a cluster with ``cluster_gpus`` GPUs."""
    vllm = "llm" in stage.models and config.llm.backend == "vllm"
    gpus = float(config.llm.engine_args.get("tensor_parallel_size", 1)) if vllm else \
        (1.0 if stage.models and on_gpus(config, cluster_gpus) else 0.0)
    memory = 0 if gpus else sum(weights_bytes(model_folder(role, config, student)) for role in stage.models)
    return Needs(gpus, memory)


def model_folder(role: str, config: GenerationConfig, student: Path | None) -> str:
    """Where a role's weights are (a folder, ``pkg:NAME`` or a hub id; empty for a model built from settings)."""
    if role == "llm":
        return config.llm.model
    if role == "nli":
        return "" if config.nli.scratch is not None else config.nli.model
    return str(student) if student is not None else ""


def weights_bytes(model: str) -> int:
    """Bytes of a local model's weight files (what loading it costs in memory, at least); 0 when not local."""
    from ..models.folders import SAFE_SUFFIXES, model_source

    if not model:
        return 0
    try:
        folder = Path(model_source(model))
    except Exception:                      # a package that is not installed: the stage's own load will say so
        return 0
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in SAFE_SUFFIXES)


def _seed(runner: Runner, rows: list[Row], seed: int, shard: int) -> list[Row]:
    from .transforms import seed_batch

    return seed_batch(rows, runner.models, runner.prompts, seed)


def _filter(runner: Runner, rows: list[Row], seed: int, shard: int) -> list[Row]:
    from .transforms import filter_batch

    return filter_batch(rows, runner.models)


def _augment(runner: Runner, rows: list[Row], seed: int, shard: int) -> list[Row]:
    from .transforms import augment_batch

    return augment_batch(rows, runner.models, runner.prompts, runner.augment_pool, seed) if runner.augment_pool \
        else []


def _build(runner: Runner, rows: list[Row], seed: int, shard: int) -> list[Row]:
    from .transforms import build_batch

    return build_batch(rows, runner.models, seed, runner.teacher_chains(shard))


def _captions(runner: Runner) -> None:
    runner.write_captions()


def _distill(runner: Runner) -> None:
    runner.distill()


def _export(runner: Runner) -> None:
    from .export import write_export

    write_export(runner, sharded())


STAGES: tuple[Stage, ...] = (
    Stage("captions", "00-captions", run=_captions, seed_key=0),
    Stage("seed", "10-seed", "captions", _seed, models=("llm",), seed_key=1),
    Stage("filter", "20-filter", "seed", _filter, models=("nli",), teaches=True, seed_key=2),
    Stage("augment", "30-augment", "captions", _augment, models=("llm", "nli"), teaches=True, seed_key=3),
    Stage("distill", "40-distill", run=_distill, seed_key=4),
    Stage("build", "50-build", "captions", _build, models=("student", "nli"), seed_key=5),
    Stage("export", "60-export", run=_export, seed_key=6),
)
"""Every stage in run order: adding one is adding its declaration here (resume, markers, ``--until``, the seeds,
placement and the Ray engine follow)."""


def stage(name: str) -> Stage:
    """The declared stage of this name (read from ``STAGES`` at call time)."""
    found = {s.name: s for s in STAGES}
    if name not in found:
        from ..errors import HierarcapsError

        raise HierarcapsError(f"unknown stage {name!r} (stages: {', '.join(found)})")
    return found[name]


def names() -> list[str]:
    return [s.name for s in STAGES]


def teaching() -> tuple[str, ...]:
    """The stages whose accepted rows are the LLM's judged chains, in run order."""
    return tuple(s.name for s in STAGES if s.teaches)


def sharded() -> tuple[str, ...]:
    """The stages that run shard by shard on the engine, in run order."""
    return tuple(s.name for s in STAGES if s.transform is not None)
