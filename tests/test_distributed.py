"""The Ray engine: generation and memory builds on a local Ray cluster write the same bytes as the local
engine, and a run killed mid-stage under Ray resumes to those bytes; on-disk IVF indexes resume, move and
search like in-RAM ones."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_generation_models import kill_when, run_generate_cli, write_tiny_config

from hierarcaps.engines import RayEngine
from hierarcaps.errors import HierarcapsError
from hierarcaps.reco.memory import Memory, MemoryItem
from hierarcaps.reco.memory_build import BuildOptions, write_memory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_address() -> str:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def same_files(a: Path, b: Path, pattern: str) -> list[str]:
    """Relative paths of the files matching ``pattern`` under ``a``, after checking ``b`` holds the same bytes."""
    names = sorted(str(p.relative_to(a)) for p in a.glob(pattern) if p.is_file())
    assert names and names == sorted(str(p.relative_to(b)) for p in b.glob(pattern) if p.is_file())
    differ = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    assert not differ, differ
    return names


def test_generation_under_ray_writes_the_local_bytes_and_resumes_after_a_kill(
        tmp_path: Path, tiny_models: Path, expanded_records, ray_address: str) -> None:
    from hierarcaps.data.csvio import write_csv
    from hierarcaps.generation.config import load_config
    from hierarcaps.generation.runner import Runner

    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:50], captions, fmt="pairs")
    config_path = write_tiny_config(tmp_path, tiny_models, captions, steps=20)
    config = load_config(config_path)
    local = tmp_path / "local"
    Runner(dataclasses.replace(config, out=str(local)), progress=False).run()

    # a second driver on the same cluster, killed with its actors once the seed stage is under way
    out = tmp_path / "ray"
    kill_when(run_generate_cli(config_path, out, extra=["--engine", "ray", "--address", ray_address]),
              (out / "10-seed", "shard-*.done"))
    finished = len(list(out.glob("[0-5]0-*/shard-*.done")))
    assert 1 <= finished < 5 * 5 and not (out / "60-export").exists()
    Runner(dataclasses.replace(config, out=str(out)), progress=False, engine=RayEngine(address=ray_address)).run()

    shards = same_files(local, out, "[0-5]0-*/shard-*.parquet")
    assert len(shards) == 5 * 5                      # captions, seed, filter, augment, build: 5 shards each
    exported = same_files(local, out, "60-export/hierarchies.*")
    assert exported == ["60-export/hierarchies.csv", "60-export/hierarchies.parquet"]


def unit(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def random_pairs(count: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray, list[MemoryItem]]:
    rng = np.random.default_rng(0)
    items = [MemoryItem(f"i{i}", f"caption {i}", None, "synthetic", group=f"g{i // 3}") for i in range(count)]
    return unit(rng.standard_normal((count, dim))), unit(rng.standard_normal((count, dim))), items


def cpus_free_within(seconds: float) -> float:
    """The cluster's free CPUs once all are free, or after ``seconds``."""
    import ray

    deadline = time.monotonic() + seconds
    while (free := ray.available_resources().get("CPU", 0.0)) < ray.cluster_resources()["CPU"] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    return free


def test_memory_under_ray_writes_the_local_bytes(tmp_path: Path, ray_address: str, test_image_dir: Path) -> None:
    from hierarcaps.models import load_encoder
    from hierarcaps.models.random_models import save_random_hf_clip
    from hierarcaps.reco.memory_build import build_memory

    # embedded by actors that each load the encoder from its spec, then an on-disk IVF filled block by block
    clip = str(save_random_hf_clip(tmp_path / "clip", "tiny"))
    images = sorted(test_image_dir.glob("*.jpg"))[:40]
    items = [MemoryItem(f"p{i}", f"a photo number {i}", str(path), "test") for i, path in enumerate(images)]
    encoder = load_encoder(clip, lazy=True)
    for name, engine in (("local", None), ("ray", RayEngine(address=ray_address))):
        build_memory(tmp_path / name, items, encoder, BuildOptions(index="ivf", on_disk=True, engine=engine),
                     shard_size=15, spec=clip)
    # an error inside an actor reaches the caller as the package's own error, not as Ray's wrapper
    with pytest.raises(HierarcapsError, match="no-such-model"):
        build_memory(tmp_path / "broken", items, encoder, BuildOptions(engine=RayEngine(address=ray_address)),
                     shard_size=15, spec="no-such-model")
    # images travel to actors inside their shard's task, so they must be paths or URLs there
    from PIL import Image

    in_ram = [dataclasses.replace(items[0], image=Image.open(items[0].image)), *items[1:]]
    with pytest.raises(HierarcapsError, match=r"'p0'.*paths or URLs, not as JpegImageFile"):
        build_memory(tmp_path / "in-ram", in_ram, encoder, BuildOptions(engine=RayEngine(address=ray_address)),
                     shard_size=15, spec=clip)
    # ... and the failed job's actors give their CPUs back, though the error is still held here (a held error
    # used to keep them: the next job then waited for CPUs forever)
    assert cpus_free_within(10.0) == 2.0
    assert same_files(tmp_path / "local", tmp_path / "ray", "*") == [
        ".hierarcaps-owner.json", ".hierarcaps.lock", "image.faiss", "image.ivfdata", "image.npy", "manifest.json",
        "meta.parquet", "text.faiss", "text.ivfdata", "text.npy"]

    # IVF-PQ blocks of precomputed embeddings, through the command line (a second driver on the cluster,
    # asking for more actors than the cluster has CPUs: its pools start with those that fit)
    image, text, _ = random_pairs(3000)
    np.savez(tmp_path / "pairs.npz", image=image, text=text, groups=np.arange(3000) // 3)
    for name, engine in (("pq-local", []), ("pq-ray", ["--engine", "ray", "--address", ray_address, "--actors", "4"])):
        done = subprocess.run([sys.executable, "-m", "hierarcaps", "reco", "memory", str(tmp_path / "pairs.npz"),
                               "--out", str(tmp_path / name), "--index", "ivfpq", "--on-disk", "--shard-size", "700",
                               *engine], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    same_files(tmp_path / "pq-local", tmp_path / "pq-ray", "*")
    assert Memory(tmp_path / "pq-ray").manifest["on_disk"] is True


def test_a_workers_error_lets_the_other_shards_finish_and_comes_back_whole(tmp_path: Path,
                                                                         ray_address: str) -> None:
    from hierarcaps.errors import DataError

    def worker(task: dict) -> dict:          # shards 3 and 1 have bad rows; the others write their marker
        if task["shard"] in (3, 1):
            raise DataError("not a caption", file="captions.csv", row=10 * task["shard"], field="caption")
        (tmp_path / f"shard-{task['shard']}.done").write_text("done")
        return {"shard": task["shard"]}

    tasks = [{"shard": n} for n in range(6)]
    with pytest.raises(DataError) as raised:
        list(RayEngine(address=ray_address).map(worker, tasks, desc="bad rows", progress=False))
    # the earliest failed task's error, of its own class, with the place it names
    assert (raised.value.file, raised.value.row, raised.value.field) == ("captions.csv", 10, "caption")
    assert str(raised.value) == "captions.csv, row 10, field 'caption': not a caption"
    assert sorted(p.name for p in tmp_path.glob("*.done")) == [f"shard-{n}.done" for n in (0, 2, 4, 5)]
    assert cpus_free_within(10.0) == 2.0


def test_the_ray_engine_without_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(HierarcapsError, match=r"pip install 'hierarcaps\[distributed\]'"):
        RayEngine()


def test_a_cluster_address_nobody_answers_at_fails_in_seconds_with_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import socket

    with socket.socket() as probe:                     # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    np.savez(tmp_path / "pairs.npz", image=random_pairs(3000)[0], text=random_pairs(3000)[1])
    done = subprocess.run([sys.executable, "-m", "hierarcaps", "reco", "memory", str(tmp_path / "pairs.npz"), "--out",
                           str(tmp_path / "memory"), "--index", "ivf", "--on-disk", "--shard-size", "1000",
                           "--engine", "ray", "--address", f"127.0.0.1:{port}"], capture_output=True, text=True,
                          timeout=300)                                    # Ray alone retries for many minutes
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"hierarcaps reco: no Ray cluster answers at 127.0.0.1:{port} (Connection refused); start one with "
        "`ray start --head`, or leave out --address for a cluster on this machine"]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_on_disk_index_resumes_moves_and_finds_the_exact_neighbours(tmp_path: Path, kind: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.reco import memory_build as memory_module
    from hierarcaps.reco.index import build_index

    image, text, items = random_pairs(4000)
    write_memory(tmp_path / "straight", image, text, items, BuildOptions(index=kind, on_disk=True, block_size=500))

    real_call, calls = memory_module.IndexBlockWorker.__call__, []

    class Killed(Exception):
        pass

    def dies_on_the_third_block(self, task):
        calls.append(task["block"])
        if calls == [0, 1, 2]:
            raise Killed
        return real_call(self, task)

    monkeypatch.setattr(memory_module.IndexBlockWorker, "__call__", dies_on_the_third_block)
    with pytest.raises(Killed):
        write_memory(tmp_path / "killed", image, text, items, BuildOptions(index=kind, on_disk=True, block_size=500))
    assert len(list((tmp_path / "killed" / "blocks").glob("image-0000*.faiss"))) == 2
    calls[:] = ["resumed"]
    write_memory(tmp_path / "killed", image, text, items, BuildOptions(index=kind, on_disk=True, block_size=500))
    assert calls == ["resumed", 2, 3, 4, 5, 6, 7, *range(8)], calls      # image: the six unfinished blocks; text: all
    same_files(tmp_path / "straight", tmp_path / "killed", "*")
    assert not (tmp_path / "killed" / "blocks").exists()

    moved = tmp_path / "elsewhere" / "memory"
    shutil.move(tmp_path / "killed", moved)
    memory = Memory(moved)
    queries = unit(np.random.default_rng(1).standard_normal((50, image.shape[1])))
    exact = np.argsort(-(queries @ image.T), axis=1, kind="stable")[:, :10]
    scores, rows = memory.search(queries, "image", 10, duplicate_threshold=1.01)
    # an on-disk IVF-PQ re-ranks its candidates from the stored vectors: its scores are the exact cosines
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ image.T, rows, axis=1), rtol=1e-5, atol=1e-6)
    # and it finds at least what the same index type built in RAM finds (IVF-PQ there: IndexRefineFlat)
    _, in_ram = build_index(image, kind).search(queries, 10)
    assert recall_at(rows, exact) >= max(recall_at(in_ram, exact), 0.8), (recall_at(rows, exact),
                                                                          recall_at(in_ram, exact))


def test_a_fast_scan_memory_scores_exactly_and_finds_what_ivf_finds(tmp_path: Path) -> None:
    from hierarcaps.errors import HierarcapsError
    from hierarcaps.reco.index import FAST_SCAN_FROM, build_index, default_index_type, fast_scan_subquantizers

    image, text, items = random_pairs(4000)
    write_memory(tmp_path / "fs", image, text, items, BuildOptions(index="ivffs"))
    memory = Memory(tmp_path / "fs")
    assert memory.rerank > 0 and default_index_type(FAST_SCAN_FROM) == "ivffs"
    assert default_index_type(FAST_SCAN_FROM, on_disk=True) == "ivf"       # fast-scan lists live in RAM
    queries = unit(np.random.default_rng(1).standard_normal((50, image.shape[1])))
    exact = np.argsort(-(queries @ image.T), axis=1, kind="stable")[:, :10]
    scores, rows = memory.search(queries, "image", 10, duplicate_threshold=1.01)
    # 4-bit codes only choose the candidates: the scores are the exact cosines of the stored vectors
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ image.T, rows, axis=1), rtol=1e-5, atol=1e-6)
    _, by_ivf = build_index(image, "ivf").search(queries, 10)
    assert recall_at(rows, exact) >= recall_at(by_ivf, exact) - 0.05 and recall_at(rows, exact) >= 0.8
    assert (fast_scan_subquantizers(512), fast_scan_subquantizers(100), fast_scan_subquantizers(6)) == (256, 50, 2)
    with pytest.raises(HierarcapsError, match="even dimension"):
        fast_scan_subquantizers(33)


def test_a_graph_quantizer_trains_the_same_bytes_and_finds_what_a_flat_one_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.reco import index as index_module

    image, text, items = random_pairs(5000)
    write_memory(tmp_path / "flat-quantizer", image, text, items,
                 BuildOptions(index="ivf", on_disk=True, block_size=1000))
    monkeypatch.setattr(index_module, "HNSW_QUANTIZER_LISTS", 64)      # 282 lists here: a graph quantizer
    for name in ("graph", "graph-again"):
        write_memory(tmp_path / name, image, text, items, BuildOptions(index="ivf", on_disk=True, block_size=1000))
    same_files(tmp_path / "graph", tmp_path / "graph-again", "*")
    graph, flat = Memory(tmp_path / "graph"), Memory(tmp_path / "flat-quantizer")
    assert "HNSW" in type(index_module.faiss_quantizer(graph.indexes["image"])).__name__
    queries = unit(np.random.default_rng(2).standard_normal((100, image.shape[1])))
    exact = np.argsort(-(queries @ image.T), axis=1)[:, :10]
    found = {name: memory.search(queries, "image", 10, duplicate_threshold=1.01)[1]
             for name, memory in (("graph", graph), ("flat", flat))}
    assert recall_at(found["graph"], exact) >= recall_at(found["flat"], exact) - 0.02, \
        (recall_at(found["graph"], exact), recall_at(found["flat"], exact))


FAKE_GPU_CLUSTER = """
import dataclasses, json, sys
from pathlib import Path
import ray
ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
from hierarcaps.engines import RayEngine
from hierarcaps.generation.config import load_config
from hierarcaps.generation.runner import Runner
from hierarcaps.generation.stages import needs, stage as declared
config, report = load_config(sys.argv[1]), {"memory": ray.cluster_resources()["memory"]}
for device in ("auto", "cpu"):
    run = dataclasses.replace(config, device=device, out=str(Path(sys.argv[2]) / device))
    engine = RayEngine()
    Runner(run, progress=False, engine=engine).run("filter")
    report[device] = {}
    for stage in ("seed", "filter"):
        need = needs(declared(stage), run, engine.gpus())
        report[device][stage] = {"needs": dataclasses.asdict(need), "pool": engine.pool(ray, need.gpus, need.memory)}
report["memory_bound_pool"] = RayEngine().pool(ray, 0.0, int(report["memory"] // 3))
print(json.dumps(report))
"""


def test_on_a_cluster_with_gpus_each_stage_gets_one_gpu_per_worker_and_cpu_stages_see_none(
        tmp_path: Path, tiny_models: Path, expanded_records) -> None:
    """A Ray cluster that declares two GPUs (Ray schedules them; nothing here uses them): with ``device: auto``
    the LLM and NLI stages ask for one GPU per worker, so two actors, each seeing its own GPU alone; with
    ``device: cpu`` they ask for none, their actors see no GPU, and the pool follows the CPUs and the memory."""
    import json

    from hierarcaps.data.csvio import write_csv

    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:50], captions, fmt="pairs")
    config = write_tiny_config(tmp_path, tiny_models, captions, steps=20)
    done = subprocess.run([sys.executable, "-c", FAKE_GPU_CLUSTER, str(config), str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for stage, folder in (("seed", "10-seed"), ("filter", "20-filter")):
        gpu, cpu = report["auto"][stage], report["cpu"][stage]
        assert gpu["needs"]["gpus"] == 1.0 and gpu["pool"] == [2, 1.0, 1.0]         # one model per GPU
        assert cpu["needs"]["gpus"] == 0.0 and cpu["needs"]["memory"] > 0 and cpu["pool"] == [4, 1.0, 0.0]
        workers = {device: [json.loads(m.read_text())["worker"]
                            for m in sorted((tmp_path / "runs" / device / folder).glob("*.done"))]
                   for device in ("auto", "cpu")}
        assert len(workers["auto"]) == 5 and len(workers["cpu"]) == 5
        seen = {w["process"]: w["visible_gpus"] for w in workers["auto"]}
        assert len(seen) <= 2 and set(seen.values()) <= {"0", "1"}                  # each actor one GPU alone
        assert {w["visible_gpus"] for w in workers["cpu"]} == {""}                   # no GPU for CPU actors
        assert {w["device"] for w in workers["cpu"]} == {"cpu"}
    assert report["memory_bound_pool"] == [3, 1.0, 0.0]                             # memory caps the pool
