"""The local runner: each stage reads the previous stage's shards and writes its own, resumably.

Layout of ``out``::

    run.json                     the config (and its fingerprint) this folder belongs to
    00-captions/shard-00000.parquet + shard-00000.done     input captions, ``shard_size`` per shard
    10-seed/ 20-filter/ 30-augment/ 50-build/             one shard per caption shard
    40-distill/model/            the student (checkpoints while training)
    60-export/                   hierarchies.csv, hierarchies.parquet, stats.json, stats.md

A shard counts only once its ``.done`` marker exists (parquet and marker are each written atomically,
the marker last); a killed run recomputes the unfinished shard with the same seed, so the final data
equal an uninterrupted run's, with nothing lost or duplicated.

The shard stages (seed, filter, augment, build, and the export's final NLI pass) run on an engine
(``hierarcaps.engines``): in this process, or as a Ray Data job whose actors each build their own
``Runner`` over the same folder. Either engine writes the same bytes, and either resumes the other's run.
Captions, distillation and the export's de-duplication and files run here (distillation is one model's
optimisation: split across nodes it would follow another trajectory and give another student).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_open, atomic_path, sha256_file
from ..data.csvio import write_csv, write_parquet
from ..data.records import Hierarchy
from ..engines import Engine, LocalEngine
from ..errors import DataError, HierarcapsError
from ..outputs import claim_folder, folder_lock
from .config import GenerationConfig
from .prompts import load_prompts
from .stages import (
    Models,
    Row,
    augment_batch,
    build_batch,
    decide_built,
    decide_llm_chain,
    filter_batch,
    final_check,
    seed_batch,
)


def read_captions(path: str | Path) -> list[Row]:
    """Captions from a text file (one per line), a table with a ``caption`` column (CSV, TSV or parquet; ``id``
    and ``image_url`` optional), or a hierarchy file (its tier-4 captions)."""
    from ..data.tables import header_of, read_text, records

    path = Path(path)
    if not path.exists():
        raise DataError("no such input file", file=str(path))
    if path.name.lower().removesuffix(".gz").endswith(".txt"):
        return [{"id": f"line-{n}", "caption": line.strip(), "image_url": None}
                for n, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]
    if "caption" not in header_of(path):
        from ..data.csvio import read_hierarchies

        return [{"id": r.id, "caption": r.positive[-1], "image_url": r.image_url}
                for r in read_hierarchies(path, n_tiers=None)]
    rows = []
    for number, row in records(path, ("caption",)):
        caption = str(row.get("caption") or "").strip()
        if not caption:
            raise DataError("empty caption", file=str(path), row=number, field="caption")
        rows.append({"id": str(row.get("id") or f"row-{number}"), "caption": caption,
                     "image_url": row.get("image_url") or None})
    return rows


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
        self.models = Models(config, self.out / STAGE["distill"].folder / "model")
        self._versions: dict[str, str] = {}

    # -- files -------------------------------------------------------------------------------------------
    def _claim_folder(self) -> None:
        """Refuse to mix runs: a folder belongs to one config fingerprint, once it holds any finished work
        (a run that failed before finishing a shard blocks nothing)."""
        run_file = self.out / "run.json"
        if run_file.exists():
            recorded = json.loads(run_file.read_text())
            if recorded["fingerprint"] == self.config.fingerprint():
                return
            if any(self.out.glob("*/*.done")) or (self.out / STAGE["distill"].folder / "model").exists():
                raise HierarcapsError(f"{self.out} holds a run with other settings; use a new `out` or delete it")
        with atomic_open(run_file) as handle:
            json.dump({"fingerprint": self.config.fingerprint(), "config": self.config.to_dict(),
                       "package_version": __version__}, handle, indent=2)

    def shard_path(self, stage: str, shard: int) -> Path:
        return self.out / STAGE[stage].folder / f"shard-{shard:05d}.parquet"

    def is_done(self, stage: str, shard: int) -> bool:
        return self.shard_path(stage, shard).with_suffix(".done").exists()

    def model_versions(self) -> dict[str, str]:
        """Versions of the run's models; each folder is hashed once per run (weights can be gigabytes)."""
        from ..nli import nli_version
        from .backends import model_version

        if not self._versions:
            self._versions = {"llm": f"{self.config.llm.backend}:{model_version(self.config.llm.model)}",
                              "nli": nli_version(self.config.nli)}
        student = self.out / STAGE["distill"].folder / "model"
        if "student" not in self._versions and student.exists():
            self._versions["student"] = model_version(str(student))
        return self._versions

    def _write_shard(self, stage: str, shard: int, rows: list[Row], seconds: float) -> None:
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
            json.dump({"rows": len(rows), "seconds": seconds, "sha256": sha256_file(path)}, handle)

    def read_shard(self, stage: str, shard: int) -> list[Row]:
        import pyarrow.parquet as pq

        table = pq.read_table(self.shard_path(stage, shard))
        return [] if table.num_rows == 0 else table.to_pylist()

    def read_stage(self, stage: str) -> list[Row]:
        return [row for shard in range(self.n_shards) for row in self.read_shard(stage, shard)]

    def shard_seed(self, stage: str, shard: int) -> int:
        sequence = np.random.SeedSequence([self.config.seed, STAGE[stage].seed_key, shard])
        return int(sequence.generate_state(1)[0] % (2**31 - 1))

    # -- stages ------------------------------------------------------------------------------------------
    def stage_captions(self) -> None:
        manifest = self.out / STAGE["captions"].folder / "manifest.json"
        if manifest.exists():
            self.n_shards = json.loads(manifest.read_text())["shards"]
            return
        rows = read_captions(self.config.input)[:self.config.limit]
        if not rows:
            raise DataError("no captions in the input", file=self.config.input)
        repeated = [i for i, n in collections.Counter(r["id"] for r in rows).items() if n > 1]
        if repeated:
            raise DataError(f"duplicated caption id {repeated[0]!r}", file=self.config.input, field="id")
        size = self.config.shard_size
        self.n_shards = -(-len(rows) // size)
        for shard in range(self.n_shards):
            self._write_shard("captions", shard, rows[shard * size:(shard + 1) * size], 0.0)
        with atomic_open(manifest) as handle:
            json.dump({"shards": self.n_shards, "captions": len(rows)}, handle)

    def attach(self) -> Runner:
        """Join a run whose captions are already sharded (what an engine's worker does)."""
        self.prompts = load_prompts(self.config.prompts)
        self.n_shards = json.loads((self.out / STAGE["captions"].folder / "manifest.json").read_text())["shards"]
        return self

    def teacher_chains(self, shard: int) -> dict[str, list[tuple[str, list[str]]]]:
        """Caption id -> the LLM's accepted chains for it in this shard (seed first, then augmentation), each
        with its origin: they are built and exported beside the student's, so a weak student loses nothing."""
        chains: dict[str, list[tuple[str, list[str]]]] = collections.defaultdict(list)
        for stage in ("filter", "augment"):
            if not self.shard_path(stage, shard).exists():
                continue
            for row in self.read_shard(stage, shard):
                if row.get("reason") is None and row.get("chain"):
                    chains[row["id"].split("#")[0]].append((row.get("origin") or stage, list(row["chain"])))
        return chains

    @functools.cached_property
    def augment_pool(self) -> list[tuple[str, ...]]:
        """The accepted seed chains the augment prompts draw demonstrations from (none: augmentation is off)."""
        return self.accepted_chains("filter") if self.config.augment.samples_per_caption > 0 else []

    def compute_shard(self, stage: str, shard: int) -> dict[str, Any]:
        """One shard of a shard stage, written with its marker and the seconds its work took (loading a model
        on first use is not counted: it is the same whatever the shard)."""
        begun, loading = time.perf_counter(), self.models.load_seconds
        declared = STAGE[stage]
        rows = declared.transform(self, self.read_shard(declared.source, shard), self.shard_seed(stage, shard), shard)
        seconds = time.perf_counter() - begun - (self.models.load_seconds - loading)
        self._write_shard(stage, shard, rows, seconds)
        return {"shard": shard, "rows": len(rows)}

    def worker(self, stage: str) -> ShardWorker:
        """This runner itself under the local engine; a fresh runner per actor under Ray."""
        own = self if self.engine.in_process else None
        return ShardWorker(self.config, stage, own)

    def map_shards(self, stage: str) -> None:
        """Compute and write every unfinished shard of a shard stage on the run's engine."""
        todo = [{"shard": s} for s in range(self.n_shards) if not self.is_done(stage, s)]
        for _ in self.engine.map(self.worker(stage), todo, desc=f"Stage {stage}", progress=self.progress,
                                 gpus=STAGE[stage].gpus(self.config)):
            pass

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

    def run(self, until: str = "export") -> Path:
        """Run every stage up to ``until``; returns the folder that stage wrote."""
        if until not in STAGE:
            raise HierarcapsError(f"unknown stage {until!r} (stages: {', '.join(STAGE)})")
        self.prompts = load_prompts(self.config.prompts)   # inputs are checked before the folder is claimed
        if not Path(self.config.input).exists():
            raise DataError("no such input file", file=self.config.input)
        claim_folder(self.out, RUN_KIND, option="out", adopt_if="run.json")
        with folder_lock(self.out, what=f"the generation run {self.out}"):
            if (self.out / RETHRESHOLD_PENDING).exists():
                raise HierarcapsError(f"{self.out}: a --rethreshold was interrupted; run it again to finish it")
            self._claim_folder()
            for stage in STAGES:
                if stage.transform is not None:
                    self.map_shards(stage.name)
                else:
                    stage.run(self)
                if stage.name == until:
                    break
        return self.out / STAGE[until].folder

    def stage_distill(self) -> None:
        from .distill import Distiller

        folder = self.out / STAGE["distill"].folder
        if not (folder / "model").exists():
            chains = self.accepted_chains("filter", "augment")
            Distiller(self.config.distill, chains, folder, self.config.seed, self.progress, self.models.device).run()

    def stage_export(self) -> None:
        """A final check (every link of each positive entailed, from the probabilities stored at build),
        de-duplication, the official CSV and parquet with provenance, and the statistics."""
        from .report import deduplicate, render_stats, stage_summary, tier_lengths

        folder = self.out / STAGE["export"].folder
        if (folder / "stats.json").exists():
            return
        built = self.read_stage("build")
        final = deduplicate([invalid_as_reason(final_check(row, self.config.nli)) for row in built])
        records = [Hierarchy(id=r["id"], positive=tuple(r["positive"]), negative=tuple(r["negative"]),
                             image_url=r["image_url"] or None, source=r.get("source") or "student",
                             split="generated")
                   for r in final if r["reason"] is None]
        settings = {k: v for k, v in self.config.to_dict().items() if k != "out"}   # where it ran is not provenance
        provenance = {"config": settings, "config_fingerprint": self.config.fingerprint(),
                      "models": self.model_versions()}
        csv_path = write_csv(records, folder / "hierarchies.csv", fmt="pairs")
        parquet_path = write_parquet(records, folder / "hierarchies.parquet",
                                     metadata={"hierarcaps.provenance": json.dumps(provenance)})
        distill_summary = json.loads((self.out / STAGE["distill"].folder / "summary.json").read_text())
        stats = {
            "captions": json.loads((self.out / STAGE["captions"].folder / "manifest.json").read_text())["captions"],
            "stages": {stage: stage_summary(built if stage == "build" else self.read_stage(stage),
                                             stage_seconds(self, stage))
                       for stage in ("seed", "filter", "augment", "build")},
            "distill": {k: v for k, v in distill_summary.items() if k != "config"},
            "export": {**stage_summary(final, 0.0), "hierarchies": len(records)},
            "tier_words": tier_lengths(records),
            "examples": [{"positive": list(r.positive), "negative": list(r.negative)} for r in records[:5]],
            "files": {p.name: sha256_file(p) for p in (csv_path, parquet_path)},
            **provenance,
        }
        (folder / "stats.md").write_text(render_stats(stats), encoding="utf-8")
        with atomic_open(folder / "stats.json") as handle:   # last: its presence marks the export complete
            json.dump(stats, handle, indent=2)


def invalid_as_reason(row: Row) -> Row:
    """A built row whose hierarchy would not pass `hierarcaps validate` is rejected with the first problem as its
    reason: the export holds only valid records."""
    if row["reason"] is not None:
        return row
    record = Hierarchy(id=row["id"], positive=tuple(row["positive"]), negative=tuple(row["negative"]))
    problems = record.problems()
    return {**row, "reason": f"invalid:{problems[0][0]}"} if problems else row


@dataclasses.dataclass
class ShardWorker:
    """An engine's worker for one shard stage: computes a shard (and writes it when ``write``); under Ray each
    actor builds its own runner, and so loads the stage's models once."""

    config: GenerationConfig
    stage: str
    runner: Runner | None = None

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        if self.runner is None:                 # a Ray actor: its process is the package's to set up
            set_threads(self.config.threads)
            self.runner = Runner(self.config, progress=False).attach()
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


RETHRESHOLD_STAGES = ("filter", "augment")
RETHRESHOLD_PENDING = "rethreshold.pending"
RUN_KIND = "generation run"


def rethreshold(config: GenerationConfig) -> dict[str, dict[str, int]]:
    """Re-decide every judged chain from the NLI probabilities stored with it, under ``config``'s thresholds,
    without running any model. When the chains the student learns from are the same as before (only the
    contradiction threshold changed, say), the student and the built rows are kept and the built rows'
    negatives re-decided from their stored candidate scores; otherwise distill and build are removed and the
    next run recomputes them. The export is always redone by the next run. Returns reason counts per stage."""
    runner = Runner(config, progress=False)             # models load lazily: none is touched here
    manifest = runner.out / STAGE["captions"].folder / "manifest.json"
    if not manifest.exists() or not (runner.out / "run.json").exists():
        raise HierarcapsError(f"{runner.out} holds no generation run to re-decide")
    claim_folder(runner.out, RUN_KIND, option="out", adopt_if="run.json")
    with folder_lock(runner.out, what=f"the generation run {runner.out}"):
        return _redecide(runner, config, manifest)


def _redecide(runner: Runner, config: GenerationConfig, manifest: Path) -> dict[str, dict[str, int]]:
    """The body of :func:`rethreshold`, under the run's lock; a marker says it is under way until it is done,
    so a killed one is finished by running it again (every decision follows from the stored probabilities)."""
    recorded = _without_decisions(json.loads((runner.out / "run.json").read_text())["config"])
    current = _without_decisions(config.to_dict())
    changed = sorted(key for key in recorded if _recorded_part(current.get(key), recorded[key]) != recorded[key])
    if changed:
        raise HierarcapsError("--rethreshold changes only NLI thresholds; this config also changes "
                              + ", ".join(changed))
    (runner.out / RETHRESHOLD_PENDING).write_text("a --rethreshold is under way\n")
    runner.n_shards = json.loads(manifest.read_text())["shards"]
    taught = runner.accepted_chains(*RETHRESHOLD_STAGES)
    counts = {stage: redecide_stage(runner, stage, lambda row: {**row, "reason": decide_llm_chain(row, config.nli)})
              for stage in RETHRESHOLD_STAGES}
    stale = ("distill", "build", "export") if runner.accepted_chains(*RETHRESHOLD_STAGES) != taught else ("export",)
    if "build" not in stale:
        counts["build"] = redecide_stage(runner, "build", lambda row: decide_built(row, config.nli))
    for stage in stale:
        shutil.rmtree(runner.out / STAGE[stage].folder, ignore_errors=True)
    with atomic_open(runner.out / "run.json") as handle:       # the folder now holds this config's decisions
        json.dump({"fingerprint": config.fingerprint(), "config": config.to_dict(), "package_version": __version__},
                  handle, indent=2)
    (runner.out / RETHRESHOLD_PENDING).unlink()
    return counts


def redecide_stage(runner: Runner, stage: str, decide: Callable[[Row], Row]) -> dict[str, int]:
    """Rewrite every finished shard of ``stage`` with each row re-decided; the new reason counts."""
    tally: collections.Counter[str] = collections.Counter()
    for shard in range(runner.n_shards):
        if not runner.is_done(stage, shard):
            continue
        rows = [decide(row) for row in runner.read_shard(stage, shard)]
        tally.update(row["reason"] or "accepted" for row in rows)
        marker = json.loads(runner.shard_path(stage, shard).with_suffix(".done").read_text())
        runner._write_shard(stage, shard, rows, marker["seconds"])
    return dict(tally)


DECISION_SETTINGS = ("entail_threshold", "contradict_threshold", "generic_not_longer")


def _recorded_part(value: object, recorded: object) -> object:
    """``value`` cut to the keys ``recorded`` has (settings added since that run was recorded are ignored)."""
    if isinstance(value, dict) and isinstance(recorded, dict):
        return {k: _recorded_part(value.get(k), v) for k, v in recorded.items()}
    return value


def _without_decisions(config: dict) -> dict:
    """A config's settings minus those --rethreshold may change (and the output folder)."""
    nli = {k: v for k, v in config["nli"].items() if k not in DECISION_SETTINGS}
    return {**{k: v for k, v in config.items() if k != "out"}, "nli": nli}


def stage_seconds(runner: Runner, stage: str) -> float:
    """Compute time a stage's shards took, summed from their markers (so resumed runs count too)."""
    total = 0.0
    for shard in range(runner.n_shards):
        marker = runner.shard_path(stage, shard).with_suffix(".done")
        if marker.exists():
            total += json.loads(marker.read_text())["seconds"]
    return total


def llm_gpus(config: GenerationConfig) -> float:
    """GPUs one worker of an LLM stage needs: vLLM's tensor-parallel size (the transformers backend: none)."""
    if config.llm.backend == "vllm":
        return float(config.llm.engine_args.get("tensor_parallel_size", 1))
    return 0.0


def no_gpus(config: GenerationConfig) -> float:
    return 0.0


ShardTransform = Callable[[Runner, list[Row], int, int], list[Row]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, declared once: the folder it writes; a shard stage's input stage and its pure
    batch transform (runner, rows, shard seed, shard) -> rows, run shard by shard on the run's engine, and the
    GPUs one of its workers can use; or, for a stage that runs in the driver, what runs it."""

    name: str
    folder: str
    source: str = ""
    transform: ShardTransform | None = None
    run: Callable[[Runner], None] | None = None
    gpus: Callable[[GenerationConfig], float] = no_gpus
    seed_key: int = -1
    """Its shards' seeds derive from this number, fixed per stage so that adding a stage changes no other
    stage's seeds (the first seven keep the numbers they always had: their positions)."""

    def __post_init__(self) -> None:
        if self.seed_key < 0:
            object.__setattr__(self, "seed_key", zlib.crc32(self.name.encode()))


STAGES: tuple[Stage, ...] = (
    Stage("captions", "00-captions", run=Runner.stage_captions, seed_key=0),
    Stage("seed", "10-seed", "captions", lambda r, rows, seed, shard: seed_batch(rows, r.models, r.prompts, seed),
          gpus=llm_gpus, seed_key=1),
    Stage("filter", "20-filter", "seed", lambda r, rows, seed, shard: filter_batch(rows, r.models), seed_key=2),
    Stage("augment", "30-augment", "captions", lambda r, rows, seed, shard: augment_batch(
        rows, r.models, r.prompts, r.augment_pool, seed) if r.augment_pool else [], gpus=llm_gpus, seed_key=3),
    Stage("distill", "40-distill", run=Runner.stage_distill, seed_key=4),
    Stage("build", "50-build", "captions", lambda r, rows, seed, shard: build_batch(rows, r.models, seed,
                                                                                    r.teacher_chains(shard)),
          seed_key=5),
    Stage("export", "60-export", run=Runner.stage_export, seed_key=6),
)
"""Every stage in run order: adding one is adding its declaration here (resume, markers, ``--until``, the seeds
and the Ray engine follow)."""
STAGE = {stage.name: stage for stage in STAGES}
