"""The package's shape: no import cycles, counting imports inside functions (which only hide a cycle)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hierarcaps"
IMPORT_STRING = re.compile(r"^hierarcaps(\.\w+)+:\w+$")
"""A module named by string for a lazy import (an adapter's class): an edge like any import."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere in its body, resolved to module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and IMPORT_STRING.match(node.value):
            found.add(node.value.split(":")[0])                  # "module:attribute", imported by name later
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def package_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_the_walker_finds_a_cycle_it_is_shown() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles() -> None:
    graph = package_graph()
    assert len(graph) > 50 and "hierarcaps.models.registry" in graph["hierarcaps.reco.encoder"]
    assert "hierarcaps.models.hf_clip" in graph["hierarcaps.models.registry"]       # seen through its import string
    assert cycles(graph) == []


TOY_ADAPTER = '''
import zlib

import numpy as np

from hierarcaps.models.base import Encoder


class ToyEncoder(Encoder):
    """A lab's own text model: a fixed random vector per string."""

    def __init__(self, source, *, device=None):
        self.name, self.seed = f"toy:{source}", source

    def _embed_texts(self, texts, *, batch_size, progress):
        return np.stack([np.random.default_rng(zlib.crc32((self.seed + t).encode())).standard_normal(24)
                         for t in texts])

    def fingerprint(self):
        return "toy:" + self.seed
'''


def test_a_third_party_adapter_plugs_into_the_cli_through_its_entry_point(tmp_path: Path) -> None:
    """What `pip install toy-adapter` leaves in site-packages: the module and its dist-info with the entry
    point. The package is not edited; the CLI lists the adapter and scores a model through it."""
    import json
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "toy_adapter-0.1.dist-info").mkdir(parents=True)
    (site / "toy_adapter.py").write_text(TOY_ADAPTER)
    (site / "toy_adapter-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-adapter\n"
                                                                 "Version: 0.1\n")
    (site / "toy_adapter-0.1.dist-info" / "entry_points.txt").write_text(
        "[hierarcaps.encoders]\ntoy = toy_adapter:ToyEncoder\n")
    env = {**os.environ, "PYTHONPATH": str(site), "HIERARCAPS_CACHE": str(tmp_path / "cache")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "hierarcaps", *args], capture_output=True,  # noqa: E731
                                       text=True, env=env, cwd=tmp_path)
    listed = run("models")
    assert listed.returncode == 0 and "toy:..." in listed.stdout and "[toy-adapter]" in listed.stdout
    scored = run("evaluate", "--model", "toy:seed-1", "--resamples", "10", "--out", str(tmp_path / "results"),
                 "--quiet")
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(next((tmp_path / "results").rglob("*.json")).read_text())
    assert result["model"]["name"] == "toy:seed-1" and -1 <= result["metrics"]["d_corr"]["value"] <= 1
    typo = run("evaluate", "--model", "tyo:seed-1")
    assert typo.returncode == 1 and "did you mean 'toy:'" in typo.stderr


def test_the_readme_model_table_names_every_adapter_of_the_catalogue() -> None:
    from hierarcaps.models.registry import ADAPTERS

    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("### Model specs"):readme.index("### What `evaluate` reports")]
    assert all(f"`{adapter.prefix}" in table for adapter in ADAPTERS)


def test_a_metric_declared_in_the_catalogue_reaches_the_report_and_the_board(monkeypatch, tmp_path: Path) -> None:
    """The 'add a metric or a board column' path of ARCHITECTURE.md: one declaration, every table."""
    import numpy as np

    from hierarcaps.data import load_official
    from hierarcaps.harness.report import report
    from hierarcaps.leaderboard.render import markdown, page, rows
    from hierarcaps.metrics import EmbeddedBenchmark, score
    from hierarcaps.metrics.catalogue import METRICS, MetricInfo
    from hierarcaps.results import Dataset, Result

    monkeypatch.setitem(METRICS, "text_query/recall_tier1", MetricInfo(
        "text_query/recall_tier1", "TQ R@t1", "tier-1 recall, caption queries",
        lambda units: units.text_query_chains.recall_per_tier[:, 0]))
    texts = np.array([r.positive for r in load_official("test")[:100]], dtype=object)
    emb = np.random.default_rng(0).standard_normal((*texts.shape, 8))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    metrics = score(EmbeddedBenchmark(texts, emb, emb[0, 0]), resamples=10)
    result = Result.scored({"name": "m", "revision": "r", "parameters": 1}, metrics, Dataset("test", 100, "sha256:x"),
                           steps=50, root_text="", resamples=10, seed=0, level=0.95, version="test")
    value = f"{metrics['text_query/recall_tier1']['value']:.4f}"
    assert "TQ R@t1" in report([result]) and value in report([result])
    table = rows([result], {})
    assert "TQ R@t1" in markdown(table) and value in markdown(table) and "TQ R@t1" in page(table)


class ThreadEngine:
    """A third engine, declared in ``ENGINES`` only: runs shipped workers (built fresh, as on a cluster) in threads."""

    name = "threads"
    in_process = False
    used = 0

    @classmethod
    def from_options(cls, **options: object) -> ThreadEngine:
        return cls()

    def gpus(self) -> float:
        return 0.0

    def map(self, worker, tasks, *, desc, progress=True, gpus=0.0, memory=0):  # type: ignore[no-untyped-def]
        from concurrent.futures import ThreadPoolExecutor

        type(self).used += 1
        with ThreadPoolExecutor(2) as pool:
            yield from pool.map(worker, tasks)


def test_an_engine_and_a_stage_are_each_added_by_one_declaration(monkeypatch, tmp_path: Path,
                                                                  expanded_records) -> None:
    """The 'add an engine' and 'add a stage' paths of ARCHITECTURE.md: the CLI choices, the dispatch, resume
    and the seeds follow the declaration."""
    import dataclasses

    import pyarrow.parquet as pq
    from tiny_generation_models import write_tiny_config

    from hierarcaps import engines
    from hierarcaps.cli import build_parser, main
    from hierarcaps.data.csvio import write_csv
    from hierarcaps.generation import stages

    shout = stages.Stage("shout", "05-shout", "captions", lambda r, rows, seed, shard: [
        {**row, "caption": row["caption"].upper(), "seed": seed} for row in rows])
    monkeypatch.setattr(stages, "STAGES", (stages.STAGES[0], shout, *stages.STAGES[1:]))
    monkeypatch.setitem(engines.ENGINES, "threads", ThreadEngine)
    parser = build_parser()
    generate = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "generate")[1]
    choices = {action.dest: action.choices for action in generate._actions}
    assert "shout" in choices["until"] and "threads" in choices["engine"]

    captions = tmp_path / "captions.csv"
    write_csv(expanded_records[:25], captions, fmt="pairs")
    config = write_tiny_config(tmp_path, tmp_path / "no-models-needed", captions)
    folders = {}
    for name in ("local", "threads"):
        out = tmp_path / name
        assert main(["generate", "--config", str(config), "--until", "shout", "--engine", name, "--out", str(out),
                     "--no-progress"]) == 0
        folders[name] = out
    assert ThreadEngine.used == 1
    shards = sorted((folders["local"] / "05-shout").glob("*.parquet"))
    assert len(shards) == 3 and all(s.with_suffix(".done").exists() for s in shards)
    for shard in shards:                       # the same bytes whichever engine ran the new stage
        assert shard.read_bytes() == (folders["threads"] / "05-shout" / shard.name).read_bytes()
    rows = pq.read_table(shards[0]).to_pylist()
    assert rows[0]["caption"] == rows[0]["caption"].upper() and not (folders["local"] / "10-seed").exists()
    seed_stage = stages.stage("seed")
    assert dataclasses.replace(seed_stage).seed_key == 1 and shout.seed_key not in range(7)   # others keep theirs


def test_every_test_architecture_md_cites_exists() -> None:
    """ARCHITECTURE.md's 'how to add' paths name the tests that guard them: each must exist, and so must each
    module the map names."""
    import re

    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    cited = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
    assert len(cited) >= 6
    for path, name in cited:
        assert re.search(rf"^def {name}\(", (PACKAGE.parent / path).read_text(), re.M), (path, name)
    for module in re.findall(r"^  (\w+\.py)\s", text, re.M):
        assert (PACKAGE / module).exists(), module


def test_every_reported_metric_is_described_and_only_columns_are_shown_by_default() -> None:
    import numpy as np

    from hierarcaps.leaderboard.render import columns
    from hierarcaps.metrics import EmbeddedBenchmark, score
    from hierarcaps.metrics.catalogue import METRICS, headline

    rng = np.random.default_rng(0)
    texts = np.array([[f"t{r}-{k}" for k in range(4)] for r in range(30)], dtype=object)
    text_emb, image_emb = rng.standard_normal((30, 4, 8)), rng.standard_normal((30, 8))
    metrics = score(EmbeddedBenchmark(texts, text_emb, rng.standard_normal(8), image_emb, np.arange(30)),
                    resamples=5)
    assert len(metrics) == 23 and set(metrics) == set(METRICS)          # every metric a result holds is described
    assert all(METRICS[name].label and METRICS[name].description for name in metrics)
    assert [name for name, _ in columns()] == list(headline()) and "i2t_R@5" not in headline()
    assert "recall_tier1" in METRICS and not METRICS["recall_tier1"].column


def test_the_shipped_result_schema_is_the_one_derived_from_the_types() -> None:
    """One declaration of the result: the published schema file is generated from the section dataclasses
    (regenerate with ``python -c "from hierarcaps.results import write_schema; write_schema()"``)."""
    import json

    from hierarcaps.results import schema, schema_path

    assert json.loads(schema_path().read_text()) == schema()


def test_the_result_is_typed_all_the_way() -> None:
    """Model, metrics and baselines are types (an adapter's own model keys ride along in ``extra``), the JSON
    document round-trips through them, and the report and the board read the types."""
    from hierarcaps.harness.report import report
    from hierarcaps.leaderboard.render import rows
    from hierarcaps.results import Dataset, Metric, ModelInfo, Result

    metrics = {"d_corr": {"value": 0.5, "ci95": [0.4, 0.6], "n": 10}}
    document = Result.scored({"name": "m", "revision": "r", "base": "minilm", "memory_items": 3}, metrics,
                             Dataset("test", 10, "sha256:x"), steps=50, root_text="", resamples=10, seed=0,
                             level=0.95, version="test", baselines={"random": metrics}).to_dict()
    typed = Result.from_dict(document)
    assert isinstance(typed.model, ModelInfo) and typed.model.extra == {"base": "minilm", "memory_items": 3}
    assert typed.metrics["d_corr"] == Metric(0.5, [0.4, 0.6], 10) == typed.baselines["random"]["d_corr"]
    assert typed.main_score.value == 0.5 and typed.to_dict() == document
    assert document["model"]["memory_items"] == 3
    assert "0.5000 [0.400, 0.600]" in report([typed], metrics=["d_corr"])
    assert rows([typed], {})[0]["metrics"]["d_corr"].value == 0.5
