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


def test_a_resumed_distillation_with_dropout_ends_with_the_uninterrupted_weights(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """On whatever device runs the tests (a GPU when there is one): dropout draws from that device's generator,
    so only a checkpoint that keeps every device's random state resumes to the same student."""
    import torch

    from hierarcaps.generation.config import DistillConfig
    from hierarcaps.generation.distill import Distiller
    from hierarcaps.training import TrainingLoop

    device = "cuda" if torch.cuda.is_available() else "cpu"
    chains = [("animal", f"animal {i}", f"a small animal {i}", f"a small animal number {i} on the grass")
              for i in range(24)]
    scratch = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1,
               "dropout_rate": 0.3}
    config = DistillConfig(scratch=scratch, tokenizer_vocab=200, steps=6, batch_size=8, lr=3e-3, eval_every=3,
                           checkpoint_every=3)

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(folder / "model" / "model.safetensors")

    Distiller(config, chains, tmp_path / "whole", seed=0, progress=False, device=device).run()
    step = TrainingLoop._train_step

    def killed_after_the_first_checkpoint(loop: TrainingLoop) -> dict:
        if loop.step == 4:
            raise KeyboardInterrupt
        return step(loop)

    with monkeypatch.context() as patch:
        patch.setattr(TrainingLoop, "_train_step", killed_after_the_first_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            Distiller(config, chains, tmp_path / "killed", seed=0, progress=False, device=device).run()
    torch.manual_seed(12345)                               # the generators move on before the resume
    Distiller(config, chains, tmp_path / "killed", seed=0, progress=False, device=device).run()
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "killed")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
