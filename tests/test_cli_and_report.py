"""The researcher's path through the command line: reports with CIs and baselines, helpful errors, sane files."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from hierarcaps.cli import main
from hierarcaps.data import load_official
from hierarcaps.errors import ModelSpecError
from hierarcaps.metrics import EmbeddedBenchmark, all_baselines, score
from hierarcaps.metrics.catalogue import main_score_of

from .conftest import REPO


def fake_result(name: str, seed: int, folder: str | None = None) -> dict:
    """A result document built by the metric code from random text embeddings (no model needed)."""
    texts = np.array([r.positive for r in load_official("test")[:200]], dtype=object)
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((*texts.shape, 8))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    metrics = score(EmbeddedBenchmark(texts, emb, emb[0, 0], None, None), resamples=20)
    return {"schema_version": 1, "model": {"name": name, "fingerprint": f"xxh3:{seed:032x}", "folder": folder},
            "protocol": {"name": "hierarcaps-v1"}, "dataset": {"split": "test", "rows": 200},
            "main_score": main_score_of("hierarcaps-v1", metrics), "metrics": metrics,
            "baselines": all_baselines(texts, None, 0, dim=8, resamples=20)}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    for i, name in enumerate(["/home/someone/runs/model-a", "model-b"]):
        (folder / f"r{i}").mkdir(parents=True)
        (folder / f"r{i}" / "test.hierarcaps-v1.json").write_text(json.dumps(fake_result(name, i)))
    (folder / "notes.json").write_text('{"not": "a result"}')          # skipped inside a folder
    return folder


def test_report_keeps_cis_main_score_and_baselines_in_every_format(results: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(results)]) == 0
    text = capsys.readouterr().out
    assert "main score (τ_d)" in text and "caption length (words) [baseline]" in text
    assert "model-a (" in text and "/home/someone" not in text                # display names, never a path
    assert text.count("[") > 10                                              # CIs beside the values
    assert main(["report", str(results), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["kind"] for r in rows} == {"model", "baseline"} and len(rows) == 2 + 3
    model = next(r for r in rows if r["model"].startswith("model-b"))
    assert float(model["d_corr_ci_low"]) <= float(model["d_corr"]) <= float(model["d_corr_ci_high"])
    assert model["main_score"] == "d_corr" and model["main_score_value"] == model["d_corr"]
    assert main(["report", str(results), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document[0]["main_score_value"]["ci95"]
    assert main(["report", str(results), "--markdown", "--out", str(results / "table.md")]) == 0
    assert (results / "table.md").read_text().startswith("| model | split |")


def test_report_reads_the_leaderboard_and_names_files_that_are_not_results(
        results: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(REPO / "leaderboard")]) == 0
    assert "all-MiniLM-L6-v2" in capsys.readouterr().out
    assert main(["report", str(results / "notes.json")]) == 1
    err = capsys.readouterr().err
    assert "not a hierarcaps result" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("spec", "suggestion"), [
    ("open-clip:ViT-B-32/openai", "did you mean 'open_clip:'"),
    ("mini-lm", "did you mean 'minilm'"),
    ("open_clip:ViT-B-33/openai", "did you mean ViT-B-32"),
    ("open_clip:ViT-B-32/openaii", "did you mean openai"),
])
def test_model_spec_typos_fail_fast_with_a_suggestion(spec: str, suggestion: str) -> None:
    from hierarcaps.models import load_encoder

    with pytest.raises(ModelSpecError, match=suggestion) as info:
        load_encoder(spec)
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)     # a suggestion, not a 200-name dump


def test_help_shows_defaults_and_the_package_lists_its_lazy_exports(capsys: pytest.CaptureFixture) -> None:
    import hierarcaps

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "(default: sibling)" in capsys.readouterr().out
    assert {"load", "export", "read_hierarchies", "Hierarchy"} <= set(dir(hierarcaps))


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    from hierarcaps._io import atomic_open

    previous = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "result.json") as handle:
            handle.write("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644


@pytest.mark.integration
def test_evaluate_as_a_library_leaves_the_allocator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.harness import evaluation
    from hierarcaps.models import torch_utils

    called = []
    monkeypatch.setattr(torch_utils, "keep_freed_memory", lambda: called.append(1) or True)
    evaluation.evaluate("minilm", evaluation.EvalOptions(progress=False, resamples=10))
    assert called == []


def test_old_results_upgrade_and_unknown_ones_fail_with_one_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from hierarcaps.errors import HierarcapsError
    from hierarcaps.results import SCHEMA_VERSION, Result

    old = fake_result("model-old", 3)
    old.pop("main_score")
    old["schema_version"] = 1
    upgraded = Result.from_dict(old).to_dict()
    assert upgraded["schema_version"] == SCHEMA_VERSION
    assert upgraded["main_score"] == {"name": "d_corr", "value": old["metrics"]["d_corr"]["value"]}
    future = {**fake_result("model-new", 4), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(HierarcapsError, match="newer than this package"):
        Result.from_dict(future)
    broken = {**fake_result("model-broken", 5)}
    broken["metrics"]["d_corr"] = {"value": "high"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert main(["report", str(tmp_path / "broken.json")]) == 1
    err = capsys.readouterr().err
    assert "metrics.d_corr: missing ci95" in err and len(err.strip().splitlines()) == 1
