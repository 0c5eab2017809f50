"""The shared training core's outputs: the one log format, and plots that are optional everywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hierarcaps.training import write_log

LOG = [{"step": s, "loss": 1.0 / s, **({"val_loss": 2.0 / s} if s % 5 == 0 else {})} for s in range(1, 21)]


def test_the_log_and_its_curves_are_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = write_log(tmp_path, LOG, summary={"steps": 20})
    assert [p.name for p in written] == ["log.json", "loss_curves.png"]
    assert json.loads((tmp_path / "log.json").read_text()) == {"summary": {"steps": 20}, "log": LOG}


def test_without_matplotlib_every_file_but_the_plot_is_written_and_one_line_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hierarcaps.harness.plots import radius_by_tier
    from hierarcaps.metrics.scoring import EmbeddedBenchmark

    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib now raises ImportError
    assert [p.name for p in write_log(tmp_path, LOG)] == ["log.json"]
    texts = np.array([["a", "b"], ["c", "d"]], dtype=object)
    rng = np.random.default_rng(0)
    bench = EmbeddedBenchmark(texts, rng.standard_normal((2, 2, 4)), np.zeros(4) + 0.1, None, None)
    assert radius_by_tier(bench, tmp_path / "radius.png", "m") is None
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"note: matplotlib is not installed, so {tmp_path / name} was not drawn (pip install matplotlib)"
                     for name in ("loss_curves.png", "radius.png")]
    assert (tmp_path / "log.json").exists() and not (tmp_path / "loss_curves.png").exists()
