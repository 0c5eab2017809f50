"""Running a generation config: each stage reads the previous stage's shards and writes its own, resumably.

Layout of ``out``::

    run.json                     the config (and its fingerprint) this folder belongs to
    00-captions/shard-00000.parquet + shard-00000.done     input captions, ``shard_size`` per shard
    10-seed/ 20-filter/ 30-augment/ 50-build/             one shard per caption shard
    40-distill/model/            the student (checkpoints while training)
    60-export/                   hierarchies.csv, hierarchies.parquet, stats.json, stats.md

A shard counts only once its ``.done`` marker exists (parquet and marker are each written atomically,
the marker last); a killed run recomputes the unfinished shard with the same seed, so the final data
equal an uninterrupted run's, with nothing lost or duplicated.

The shard stages (``stages.STAGES`` with a transform) run on an engine (``hierarcaps.engines``): in this
process, or as a Ray Data job whose actors each build their own ``Runner`` over the same folder, each asking
for what its stage needs (``stages.needs``). Either engine writes the same bytes, and either resumes the
other's run. Captions, distillation and the export run here (distillation is one model's optimisation: split
across nodes it would follow another trajectory and give another student).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_open, atomic_path, sha256_file
from ..engines import Engine, LocalEngine
from ..errors import DataError, HierarcapsError
from ..outputs import claim_folder, folder_lock
from . import stages
from .captions import mark_teacher, read_captions
from .config import GenerationConfig
from .models import Models
from .prompts import Prompts, load_prompts
from .transforms import Row

RUN_KIND = "generation run"
RETHRESHOLD_PENDING = "rethreshold.pending"


def dry_run_config(config: GenerationConfig) -> GenerationConfig:
    """A handful of captions and a few distillation steps, in a separate folder."""
    distill = dataclasses.replace(config.distill, steps=min(config.distill.steps or 0, 10), eval_every=5,
                                  checkpoint_every=5)
    return dataclasses.replace(config, limit=min(config.limit or 8, 8), shard_size=4, out=f"{config.out}-dry-run",
                               distill=distill)


class Runner:
    """Run (or resume) every stage of a generation config."""

    def __init__(self, config: GenerationConfig, *, progress: bool = True,
                 engine: Engine | None = None) -> None:
        self.config, self.progress, self.out = config, progress, Path(config.out)
        self.engine = engine or LocalEngine()
        self.models = Models(config, self.student_folder)
        self._versions: dict[str, str] = {}

    @functools.cached_property
    def prompts(self) -> Prompts:
        """The config's prompts, read (and checked) once, when first needed."""
        return load_prompts(self.config.prompts)

    @property
    def n_shards(self) -> int:
        """How many shards the captions were written in (from the captions stage's manifest)."""
        return json.loads((self.folder("captions") / "manifest.json").read_text())["shards"]

    @property
    def student_folder(self) -> Path:
        return self.folder("distill") / "model"

    # -- shards ------------------------------------------------------------------------------------------
    def folder(self, stage: str) -> Path:
        """Where a stage writes, under the run's output folder."""
        return self.out / stages.stage(stage).folder

    def shard_path(self, stage: str, shard: int) -> Path:
        return self.folder(stage) / f"shard-{shard:05d}.parquet"

    def is_done(self, stage: str, shard: int) -> bool:
        return self.shard_path(stage, shard).with_suffix(".done").exists()

    def write_shard(self, stage: str, shard: int, rows: list[Row], seconds: float,
                    worker: dict[str, Any] | None = None) -> None:
        """A shard's rows (with the config fingerprint and model versions), then its marker (rows, seconds, the
        parquet file's SHA-256 and, for a computed shard, where it ran: the worker's process, its models'
        device and the GPUs it could see)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.shard_path(stage, shard)
        table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
        table = table.replace_schema_metadata({
            "hierarcaps.stage": stage, "hierarcaps.config_fingerprint": self.config.fingerprint(),
            "hierarcaps.models": json.dumps(self.model_versions()), "hierarcaps.version": __version__})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        with atomic_open(path.with_suffix(".done")) as handle:
            json.dump({"rows": len(rows), "seconds": seconds, "sha256": sha256_file(path),
                       **({"worker": worker} if worker else {})}, handle)

    def read_shard(self, stage: str, shard: int) -> list[Row]:
        import pyarrow.parquet as pq

        table = pq.read_table(self.shard_path(stage, shard))
        return [] if table.num_rows == 0 else table.to_pylist()

    def read_stage(self, stage: str) -> list[Row]:
        return [row for shard in range(self.n_shards) for row in self.read_shard(stage, shard)]

    def shard_seed(self, stage: str, shard: int) -> int:
        sequence = np.random.SeedSequence([self.config.seed, stages.stage(stage).seed_key, shard])
        return int(sequence.generate_state(1)[0] % (2**31 - 1))

    def stage_seconds(self, stage: str) -> float:
        """Compute time a stage's shards took, summed from their markers (so resumed runs count too)."""
        total = 0.0
        for shard in range(self.n_shards):
            marker = self.shard_path(stage, shard).with_suffix(".done")
            if marker.exists():
                total += json.loads(marker.read_text())["seconds"]
        return total

    def model_versions(self) -> dict[str, str]:
        """Versions of the run's models; each folder is hashed once per run (weights can be gigabytes)."""
        from ..nli import nli_version
        from .backends import model_version

        if not self._versions:
            self._versions = {"llm": f"{self.config.llm.backend}:{model_version(self.config.llm.model)}",
                              "nli": nli_version(self.config.nli)}
        if "student" not in self._versions and self.student_folder.exists():
            self._versions["student"] = model_version(str(self.student_folder))
        return self._versions

    # -- the run's record ----------------------------------------------------------------------------------
    def _record_run(self) -> None:
        """Refuse to mix runs: a folder belongs to one config fingerprint, once it holds any finished work
        (a run that failed before finishing a shard blocks nothing)."""
        run_file = self.out / "run.json"
        if run_file.exists():
            recorded = json.loads(run_file.read_text())
            if recorded["fingerprint"] == self.config.fingerprint():
                return
            if any(self.out.glob("*/*.done")) or self.student_folder.exists():
                raise HierarcapsError(f"{self.out} holds a run with other settings; use a new `out` or delete it")
        self.write_run_record()

    def write_run_record(self) -> None:
        """``run.json``: the config this folder's work follows, and its fingerprint."""
        with atomic_open(self.out / "run.json") as handle:
            json.dump({"fingerprint": self.config.fingerprint(), "config": self.config.to_dict(),
                       "package_version": __version__}, handle, indent=2)

    # -- driver stages -------------------------------------------------------------------------------------
    def write_captions(self) -> None:
        """The input captions, each marked for the teacher or the student, in shards."""
        manifest = self.folder("captions") / "manifest.json"
        if manifest.exists():
            return
        rows = read_captions(self.config.input)[:self.config.limit]
        if not rows:
            raise DataError("no captions in the input", file=self.config.input)
        repeated = [i for i, n in collections.Counter(r["id"] for r in rows).items() if n > 1]
        if repeated:
            raise DataError(f"duplicated caption id {repeated[0]!r}", file=self.config.input, field="id")
        rows = mark_teacher(rows, self.config)
        size = self.config.shard_size
        shards = -(-len(rows) // size)
        for shard in range(shards):
            self.write_shard("captions", shard, rows[shard * size:(shard + 1) * size], 0.0)
        with atomic_open(manifest) as handle:
            json.dump({"shards": shards, "captions": len(rows),
                       "teacher_captions": sum(r["teacher"] for r in rows)}, handle)

    def distill(self) -> None:
        from .distill import Distiller

        if not self.student_folder.exists():
            Distiller(self.config.distill, self.accepted_chains(*stages.teaching()), self.student_folder.parent,
                      self.config.seed, self.progress, self.models.device).run()

    # -- shard stages ----------------------------------------------------------------------------------------
    def teacher_chains(self, shard: int) -> dict[str, list[tuple[str, list[str]]]]:
        """Caption id -> the LLM's accepted chains for it in this shard (seed first, then augmentation), each
        with its origin: the hierarchies of the captions the LLM saw."""
        chains: dict[str, list[tuple[str, list[str]]]] = collections.defaultdict(list)
        for stage in stages.teaching():
            if not self.shard_path(stage, shard).exists():
                continue
            for row in self.read_shard(stage, shard):
                if row.get("reason") is None and row.get("chain"):
                    chains[row["id"].split("#")[0]].append((row.get("origin") or stage, list(row["chain"])))
        return chains

    @functools.cached_property
    def augment_pool(self) -> list[tuple[str, ...]]:
        """The accepted seed chains (judged by the filter stage) that augment prompts draw demonstrations from
        (none: augmentation is off)."""
        return self.accepted_chains("filter") if self.config.augment.samples_per_caption > 0 else []

    def accepted_chains(self, *stages: str) -> list[tuple[str, ...]]:
        """Accepted chains of these stages, de-duplicated (case-insensitively), in shard order."""
        seen, chains = set(), []
        for stage in stages:
            for row in self.read_stage(stage):
                key = tuple(t.lower() for t in row["chain"]) if row["reason"] is None else None
                if key is not None and key not in seen:
                    seen.add(key)
                    chains.append(tuple(row["chain"]))
        return chains

    def compute_shard(self, stage: str, shard: int) -> dict[str, Any]:
        """One shard of a shard stage, written with its marker and the seconds its work took (loading a model
        on first use is not counted: it is the same whatever the shard)."""
        begun, loading = time.perf_counter(), self.models.load_seconds
        declared = stages.stage(stage)
        rows = declared.transform(self, self.read_shard(declared.source, shard), self.shard_seed(stage, shard), shard)
        seconds = time.perf_counter() - begun - (self.models.load_seconds - loading)
        worker = {"process": os.getpid(), "device": self.models.device,
                  "visible_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
        self.write_shard(stage, shard, rows, seconds, worker)
        return {"shard": shard, "rows": len(rows)}

    def map_shards(self, stage: str) -> None:
        """Compute and write every unfinished shard of a shard stage on the run's engine, each worker given what
        the stage needs (GPUs, memory) on the engine's cluster."""
        todo = [{"shard": s} for s in range(self.n_shards) if not self.is_done(stage, s)]
        if not todo:
            return
        need = stages.needs(stages.stage(stage), self.config, self.engine.gpus(), self.student_folder)
        own = self if self.engine.in_process else None
        for _ in self.engine.map(ShardWorker(self.config, stage, own), todo, desc=f"Stage {stage}",
                                 progress=self.progress, gpus=need.gpus, memory=need.memory):
            pass

    def run(self, until: str = "export") -> Path:
        """Run every stage up to ``until``; returns the folder that stage wrote."""
        stages.stage(until)                                # an unknown stage is refused at once
        _ = self.prompts                                   # inputs are checked before the folder is claimed
        if not Path(self.config.input).exists():
            raise DataError("no such input file", file=self.config.input)
        claim_folder(self.out, RUN_KIND, option="out", adopt_if="run.json")
        with folder_lock(self.out, what=f"the generation run {self.out}"):
            if (self.out / RETHRESHOLD_PENDING).exists():
                raise HierarcapsError(f"{self.out}: a --rethreshold was interrupted; run it again to finish it")
            self._record_run()
            for stage in stages.STAGES:
                if stage.transform is not None:
                    self.map_shards(stage.name)
                else:
                    stage.run(self)
                if stage.name == until:
                    break
        return self.folder(until)


@dataclasses.dataclass
class ShardWorker:
    """An engine's worker for one shard stage: computes and writes a shard. Under the local engine it is the
    run's own runner; under Ray each actor builds its own runner (and so loads the stage's models once), on
    the device its stage was given: a worker that asked for no GPU sees none."""

    config: GenerationConfig
    stage: str
    runner: Runner | None = None

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        if self.runner is None:                 # a Ray actor: its process is the package's to set up
            set_threads(self.config.threads)
            self.runner = Runner(self.config, progress=False)
        return self.runner.compute_shard(self.stage, int(task["shard"]))


def set_threads(threads: int | None) -> None:
    """Torch's CPU threads for this process, when the config names a number (process-wide: only a process the
    package owns, the command or an engine's actor, calls this)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_generation(config: GenerationConfig, *, until: str = "export", progress: bool = True,
                   engine: Engine | None = None) -> Path:
    return Runner(config, progress=progress, engine=engine).run(until)
