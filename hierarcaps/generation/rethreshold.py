"""``generate --rethreshold``: new NLI thresholds decided from the probabilities a run stored, no model run.

Every judged chain stores the NLI's [P(entail), P(contradict)] of each link, and every built row its scored
negative candidates, so a decision can be re-made later under other thresholds. When the chains the student
learns from are the same as before (only the contradiction threshold changed, say), the student and the built
rows are kept and the built rows' negatives re-decided; otherwise distill and build are removed and the next
run recomputes them. The export is always redone by the next run.
"""

from __future__ import annotations

import collections
import json
import shutil
from collections.abc import Callable

from ..errors import HierarcapsError
from ..outputs import claim_folder, folder_lock
from . import stages
from .config import GenerationConfig
from .runner import RETHRESHOLD_PENDING, RUN_KIND, Runner
from .transforms import Row, decide_built, decide_llm_chain

DECISION_SETTINGS = ("entail_threshold", "contradict_threshold", "generic_not_longer")
"""The settings --rethreshold may change; any other change needs models to run."""


def rethreshold(config: GenerationConfig) -> dict[str, dict[str, int]]:
    """Re-decide every judged chain under ``config``'s thresholds (see the module docstring); returns reason
    counts per stage."""
    runner = Runner(config, progress=False)             # models load lazily: none is touched here
    manifest = runner.folder("captions") / "manifest.json"
    if not manifest.exists() or not (runner.out / "run.json").exists():
        raise HierarcapsError(f"{runner.out} holds no generation run to re-decide")
    claim_folder(runner.out, RUN_KIND, option="out", adopt_if="run.json")
    with folder_lock(runner.out, what=f"the generation run {runner.out}"):
        return _redecide(runner, config)


def _redecide(runner: Runner, config: GenerationConfig) -> dict[str, dict[str, int]]:
    """The body of :func:`rethreshold`, under the run's lock; a marker says it is under way until it is done,
    so a killed one is finished by running it again (every decision follows from the stored probabilities)."""
    recorded = _without_decisions(json.loads((runner.out / "run.json").read_text())["config"])
    current = _without_decisions(config.to_dict())
    changed = sorted(key for key in recorded if _recorded_part(current.get(key), recorded[key]) != recorded[key])
    if changed:
        raise HierarcapsError("--rethreshold changes only NLI thresholds; this config also changes "
                              + ", ".join(changed))
    (runner.out / RETHRESHOLD_PENDING).write_text("a --rethreshold is under way\n")
    taught = runner.accepted_chains(*stages.teaching())
    counts = {stage: redecide_stage(runner, stage, lambda row: {**row, "reason": decide_llm_chain(row, config.nli)})
              for stage in stages.teaching()}
    stale = ("distill", "build", "export") if runner.accepted_chains(*stages.teaching()) != taught else ("export",)
    if "build" not in stale:
        counts["build"] = redecide_stage(runner, "build", lambda row: decide_built(row, config.nli))
    for stage in stale:
        shutil.rmtree(runner.folder(stage), ignore_errors=True)
    runner.write_run_record()                       # the folder now holds this config's decisions
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
        runner.write_shard(stage, shard, rows, marker["seconds"], marker.get("worker"))
    return dict(tally)


def _recorded_part(value: object, recorded: object) -> object:
    """``value`` cut to the keys ``recorded`` has (settings added since that run was recorded are ignored)."""
    if isinstance(value, dict) and isinstance(recorded, dict):
        return {k: _recorded_part(value.get(k), v) for k, v in recorded.items()}
    return value


def _without_decisions(config: dict) -> dict:
    """A config's settings minus those --rethreshold may change (and the output folder)."""
    nli = {k: v for k, v in config["nli"].items() if k not in DECISION_SETTINGS}
    return {**{k: v for k, v in config.items() if k != "out"}, "nli": nli}
