"""Every script in ``benchmarks/`` runs at a tiny size against the current package, so none goes stale unseen.

Each runs as a user runs it (``python benchmarks/<script>.py``), from a scratch folder, so its default output
folders land there; a run passes when it exits 0 and writes the figures it promises.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_data_dir

BENCHMARKS = REPO / "benchmarks"
IMAGES = str(shared_data_dir() / "images")

TINY: dict[str, tuple[str, str]] = {
    "distill_student": ("--steps 2 --held-out 4 --results results", "results/distill_student.json"),
    "fast_index": ("--items 3000 --dim 32 --queries 40 --results results", "results/fast_index_3000.json"),
    "finetune_minilm": ("--steps 2 --sweep-steps 2 --lrs 1e-5 --no-ablations --val-rows 8 --batch-size 2 "
                        "--results results", "results/finetune_minilm.json"),
    "finetune_throughput": ("--steps 2 --batch-size 2 --preset tiny --json figures.json", "figures.json"),
    "generate_smollm2": ("--limit 8 --distill-steps 4 --examples 2 --results results",
                         "results/generation_smollm2.json"),
    "generation_costs": ("--captions 8 --distill-steps 4 --project 1000 --results results",
                         "results/generation_costs_cpu.json"),
    "generation_engines": ("--limit 4 --distill-steps 2 --shard-size 4 --actors 1 --results results",
                           "results/generation_engines.json"),
    "gpu_numerics": ("--image-dir {images} --device cpu --preset tiny --json figures.json", "figures.json"),
    "reco_demo": ("--images 600 --classes 4 --steps 4 --eval-every 2 --objectives vocabulary --results results",
                  "results/reco_demo.json"),
    "reco_entities": ("--entities 30 --splits 1 --steps 4 --eval-every 2 --memory-per-entity 3 --pairs-per-entity 4 "
                      "--batch-size 8 --results results", "results/reco_entities.json"),
    "reco_recipes": ("--entities 30 --splits 1 --steps 4 --eval-every 2 --memory-per-entity 3 --pairs-per-entity 4 "
                     "--batch-size 8 --results results", "results/reco_recipes.json"),
    "reco_scaling": ("--images 600 --sizes 100 --batch-size 32 --classes 4 --steps 4 --eval-every 2 "
                     "--objectives in-batch --results results", "results/reco_scaling.json"),
    "scale_memory": ("--items 6000 --dim 32 --block 2000 --engine local --queries 20 --truth-queries 10 "
                     "--results results", "results/scale_memory_6k.json"),
    "seed_throughput": ("--rows 2 --batch-size 2 --results results", "results/seed_throughput_cpu_float32.json"),
    "speed_evaluate": ("--image-dir {images} --preset tiny --json figures.json", "figures.json"),
    "speed_reco": ("--items 3000 --dim 32 --queries 20 --types flat,ivf --batch 4 --preset tiny --json figures.json",
                   "figures.json"),
}
"""Each script's tiny arguments (``{images}``: the test images) and the file of figures it must write (relative
to its scratch folder)."""


def test_every_benchmark_script_has_a_tiny_run() -> None:
    assert sorted(TINY) == sorted(p.stem for p in BENCHMARKS.glob("*.py"))


@pytest.mark.integration
@pytest.mark.parametrize("script", sorted(TINY))
def test_the_benchmark_runs_at_a_tiny_size(script: str, tmp_path: Path) -> None:
    arguments, figures = TINY[script]
    arguments = shlex.split(arguments.format(images=shlex.quote(IMAGES)))
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
                   "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), *arguments], cwd=tmp_path,
                          env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / figures).is_file(), f"{script} wrote no {figures}"
