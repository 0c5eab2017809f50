"""Model adapters through the harness: parity with a per-item loop, the cache, outputs and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hierarcaps.data import load_official, write_csv
from hierarcaps.errors import DataError, HierarcapsError, ModelSpecError
from hierarcaps.harness.evaluation import EvalOptions, embed_benchmark, evaluate, save_result
from hierarcaps.metrics.hierarchy import dot_similarity, radii
from hierarcaps.models import load_encoder
from hierarcaps.models.base import Encoder, Geometry
from hierarcaps.models.random_models import save_random_hf_clip, write_open_clip_config

from .reference_protocol import reference_scores

ROWS = 40


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return "open_clip:" + str(write_open_clip_config(tmp_path_factory.mktemp("models") / "tiny-oc.json"))


@pytest.fixture
def subset(tmp_path: Path) -> Path:
    """The first rows of the test set as a test-format file (the harness scores any such file)."""
    return write_csv(load_official("test")[:ROWS], tmp_path / "subset.csv", fmt="test")


def options(subset: Path, image_dir: Path, **kwargs: object) -> EvalOptions:
    return EvalOptions(data=str(subset), image_dir=str(image_dir), resamples=50, progress=False, workers=0,
                       **kwargs)  # type: ignore[arg-type]


def per_item_embeddings(encoder, records, image_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upstream way: one row of 4 captions and one image per forward pass."""
    text_emb = np.stack([encoder.encode_text(list(r.positive)) for r in records])
    image_emb = np.concatenate([encoder.encode_image([image_dir / r.image_file], workers=0) for r in records])
    return text_emb, image_emb, encoder.root()


@pytest.mark.parametrize("which", ["hf", "open_clip"])
def test_harness_matches_the_per_item_loop(which: str, tiny_clip: Path, tiny_open_clip: str, subset: Path,
                                           test_image_dir: Path) -> None:
    spec = str(tiny_clip) if which == "hf" else tiny_open_clip
    encoder = load_encoder(spec, device="cpu")
    result = evaluate(encoder, options(subset, test_image_dir))
    records = load_official("test")[:ROWS]
    text_emb, image_emb, root = per_item_embeddings(encoder, records, test_image_dir)
    embedded = embed_benchmark(encoder, records, options(subset, test_image_dir))
    np.testing.assert_allclose(embedded.bench.text_emb, text_emb, atol=2e-6)
    np.testing.assert_allclose(embedded.bench.image_emb, image_emb, atol=2e-6)
    ref = reference_scores([list(r.positive) for r in records], text_emb, root, image_emb, list(range(ROWS)))
    for name in ("precision", "recall", "d_corr", "order_aware_recall"):
        assert result["metrics"][name]["value"] == pytest.approx(ref[name], abs=1e-6), name
    assert result["model"]["parameters"] > 0 and result["model"]["dim"] == 32
    assert set(result["baselines"]) == {"random", "length_chars", "length_words"}
    assert {"i2t_R@1", "t2i_R@10", "text_query/recall", "recall_tier4"} <= set(result["metrics"])


def small_pixels(image) -> object:
    """A cheap, exact image transform for schedule tests: 8 x 8 RGB as floats."""
    import torch

    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_decoding_schedule_gives_the_same_batches_in_order(workers: int, test_image_dir: Path) -> None:
    import torch

    from hierarcaps.models.image_batches import ImageBatches

    paths = [test_image_dir / r.image_file for r in load_official("test")[:7]]
    expected = torch.stack([small_pixels(Image.open(p).convert("RGB")) for p in paths])
    for device, chunk_images in (("cpu", 4), ("cpu", 1024), ("cuda", 4)):    # chunked, one chunk, streamed
        batches = ImageBatches(paths, small_pixels, batch_size=2, workers=workers, device=device,
                               chunk_images=chunk_images)
        got = list(batches)
        assert [len(b) for b in got] == [2, 2, 2, 1] and len(batches) == 4
        assert torch.equal(torch.cat(got), expected), (device, chunk_images)


def test_a_lazy_hf_folder_decodes_images_before_its_weights_load(tiny_clip: Path, test_image_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hierarcaps.models import lazy

    events: list[str] = []

    class Recorded(lazy.ImageBatches):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            events.append("decoding started")

    monkeypatch.setattr(lazy, "ImageBatches", Recorded)
    encoder = load_encoder(str(tiny_clip), device="cpu", lazy=True)
    load_weights = encoder._factory

    def recorded_load():
        events.append("weights loading")
        return load_weights()

    encoder._factory = recorded_load
    paths = [test_image_dir / r.image_file for r in load_official("test")[:10]]
    early = encoder.encode_image(paths, batch_size=4, workers=1)
    assert events == ["decoding started", "weights loading"]
    eager = load_encoder(str(tiny_clip), device="cpu").encode_image(paths, batch_size=4, workers=0)
    np.testing.assert_array_equal(early, eager)       # the weight-free transform is the checkpoint's own


FREED_MEMORY_PROBE = """
import resource, sys
import numpy as np
from hierarcaps.models.torch_utils import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def fill_and_free():
    blocks = [np.ones(n * 250_000, dtype=np.float32) for n in range(1, 31)]   # 1 to 30 MB, like activations
    del blocks
fill_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc's")
def test_freed_memory_is_reused_without_page_faults() -> None:
    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE, mode], capture_output=True, text=True,
                             check=True)
        return int(run.stdout)

    assert faults("default") > 5_000           # handed back to the OS and faulted in again, page by page
    assert faults("keep") < 100


def test_cache_hits_on_rerun_and_misses_when_the_model_changes(tiny_clip: Path, subset: Path, test_image_dir: Path,
                                                               tmp_path: Path) -> None:
    first = evaluate(str(tiny_clip), options(subset, test_image_dir))
    again = evaluate(str(tiny_clip), options(subset, test_image_dir))
    assert first["timings"]["embedding_cache_hits"] == 0 and again["timings"]["embedding_cache_hits"] == 2
    assert again["metrics"] == first["metrics"]
    other = save_random_hf_clip(tmp_path / "other", "tiny", seed=1)
    changed = evaluate(str(other), options(subset, test_image_dir))
    assert changed["timings"]["embedding_cache_hits"] == 0
    assert changed["model"]["fingerprint"] != first["model"]["fingerprint"]


def test_embeddings_computed_with_other_numerics_are_not_reused(tiny_clip: Path, subset: Path, test_image_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16-autocast GPU vectors must never stand in for an exact fp32 run, nor the other way round."""
    from hierarcaps.models.lazy import LazyEncoder

    first = evaluate(str(tiny_clip), options(subset, test_image_dir))
    monkeypatch.setattr(LazyEncoder, "numerics", lambda self: "other arithmetic")
    other = evaluate(str(tiny_clip), options(subset, test_image_dir))
    assert first["timings"]["embedding_cache_hits"] == 0 and other["timings"]["embedding_cache_hits"] == 0


def test_the_device_is_known_without_importing_torch_where_no_gpu_driver_is_present() -> None:
    code = ("import sys; from hierarcaps.models import torch_utils as t; t.GPU_DRIVER_FILES = ('/nonexistent',); "
            "print(t.pick_device_lightly(), t.pick_device_lightly('cpu'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "cpu", "False"]


def test_peak_memory_is_this_process_not_the_one_that_started_it() -> None:
    ballast = bytearray(600 * 2**20)
    ballast[::4096] = b"x" * len(ballast[::4096])      # touch every page: this process now holds > 600 MB
    code = "from hierarcaps.harness.evaluation import peak_memory; print(peak_memory()['peak_memory_mb'])"
    child_peak = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    assert 10 < child_peak < 300, child_peak


@pytest.mark.integration
def test_minilm_on_the_real_test_set_matches_per_row_encoding() -> None:
    import jsonschema

    from hierarcaps.results import Result, schema_path

    result = evaluate("minilm", EvalOptions(resamples=100, progress=False))
    document = json.loads(json.dumps(result.to_dict()))
    jsonschema.validate(document, json.loads(schema_path().read_text()))          # the published schema
    assert Result.from_dict(document).to_dict() == document
    assert result["dataset"]["rows"] == 1000 and result["model"]["modalities"] == ["text"]
    assert "precision" not in result["metrics"]                      # text-only: no image metrics
    records = load_official("test")
    embedded = embed_benchmark(load_encoder("minilm", lazy=True), records, EvalOptions(progress=False))
    assert embedded.cache_hits == 1                               # the same identity as evaluate's: a cache hit
    encoder = load_encoder("minilm")
    per_row = np.stack([encoder.encode_text(list(r.positive)) for r in records[:50]])
    np.testing.assert_allclose(embedded.bench.text_emb[:50], per_row, atol=1e-5)
    assert -1 <= result["metrics"]["d_corr"]["value"] <= 1
    assert result["baselines"]["length_chars"]["d_corr"]["value"] == pytest.approx(0.869, abs=5e-4)


def test_sentence_transformers_and_mean_pooling_give_the_same_minilm() -> None:
    from hierarcaps.models.text import SentenceTransformerEncoder, packaged_minilm_path

    texts = ["", "animal", "a goat eating leaves of a lemon tree on the island", "word " * 400]
    fast, reference = load_encoder("minilm"), SentenceTransformerEncoder(packaged_minilm_path())
    np.testing.assert_allclose(fast.encode_text(texts), reference.encode_text(texts), atol=1e-5)


def test_result_file_and_report(tiny_clip: Path, subset: Path, test_image_dir: Path, tmp_path: Path) -> None:
    result = evaluate(str(tiny_clip), options(subset, test_image_dir))
    path = save_result(result, tmp_path / "results")
    assert path.name == "subset.csv.hierarcaps-v1.json" and path.parent.name.startswith("tiny-clip-")
    assert json.loads(path.read_text())["metrics"] == json.loads(json.dumps(result["metrics"]))
    report = subprocess.run([sys.executable, "-m", "hierarcaps", "report", str(tmp_path / "results"), "--markdown"],
                            capture_output=True, text=True, check=True)
    # a display name (folder name + short fingerprint), never the path; the model row and its three baselines
    assert "| tiny-clip (" in report.stdout and str(tiny_clip) not in report.stdout
    assert report.stdout.count("[baseline]") == 3 and report.stdout.count("\n") == 6


@pytest.mark.integration
def test_cli_evaluate_writes_result_and_plots(tiny_clip: Path, subset: Path, test_image_dir: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "hierarcaps", "evaluate", "--model", str(tiny_clip), "--data",
                          str(subset), "--image-dir", str(test_image_dir), "--out", str(out), "--resamples", "20",
                          "--workers", "0", "--plots", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "d_corr" in run.stdout and "caption length (characters)" in run.stdout
    assert {p.name for p in out.rglob("*") if p.is_file()} == {
        "subset.csv.hierarcaps-v1.json", "radius_by_tier.png", "predicted_chains.png"}


def test_unresolvable_specs_and_folders_without_processor(tiny_clip: Path, tmp_path: Path) -> None:
    for spec in ("no-such-model", str(tmp_path / "missing"), "open_clip:NoSuchArch-99"):
        with pytest.raises(ModelSpecError):
            load_encoder(spec)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_clip, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "processor_config.json",
                 "preprocessor_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ModelSpecError, match="processor"):
        load_encoder(str(bare))
    run = subprocess.run([sys.executable, "-m", "hierarcaps", "evaluate", "--model", "no-such-model"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "does not resolve" in run.stderr and run.stderr.count("\n") == 1


def test_an_image_that_fails_to_decode_is_named(tiny_clip: Path, test_image_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i, r in enumerate(load_official("test")[:3]):   # a custom set: images outside the shipped manifest
        name = f"custom_{i}.jpg"
        shutil.copy(test_image_dir / r.image_file, images / name)
        records.append(dataclasses.replace(r, image_url=f"http://example.invalid/{name}", image_file=name))
    broken = images / "custom_1.jpg"
    broken.write_bytes(broken.read_bytes()[:500])
    small = write_csv(records, tmp_path / "small.csv", fmt="test")
    for workers in (0, 1):
        with pytest.raises(DataError, match="cannot decode image") as info:
            evaluate(str(tiny_clip), EvalOptions(data=str(small), image_dir=str(images), workers=workers,
                                               progress=False, cache=False))
        assert "custom_1.jpg" in str(info.value) and "\n" not in str(info.value)


def test_nan_embeddings_from_a_model_are_refused(subset: Path) -> None:
    class Broken(Encoder):
        name = "broken"

        def _embed_texts(self, texts, *, batch_size, progress):
            out = np.ones((len(texts), 4), dtype=np.float32)
            out[-1] = np.nan
            return out

        def fingerprint(self) -> str:
            return "broken"

    with pytest.raises(HierarcapsError, match="NaN"):
        evaluate(Broken(), EvalOptions(data=str(subset), progress=False, cache=False))


class HashEncoder(Encoder):
    """A toy text model: a fixed random unit vector per string (no weights), default geometry."""

    loads = 0

    def __init__(self) -> None:
        type(self).loads += 1
        self.name = "hash-toy"

    def _embed_texts(self, texts: list[str], *, batch_size: int, progress: bool) -> np.ndarray:
        import zlib

        return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts])

    def fingerprint(self) -> str:
        return "toy:hash"


class InvertedGeometry(HashEncoder):
    """The same vectors with a geometry of its own: generic means far from the root, similar means far apart."""

    def geometry(self) -> Geometry:
        return Geometry(distance_to_root=lambda t, r: -radii(t, r), similarity=lambda a, b: -dot_similarity(a, b))


@pytest.mark.parametrize("model", [HashEncoder, InvertedGeometry])
def test_geometry_hooks_score_the_same_cold_and_cached(model: type, tmp_path: Path) -> None:
    from hierarcaps.models.lazy import LazyEncoder

    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    lazy = lambda: LazyEncoder(folder, model, name="toy", has_images=False, adapter=model.__name__)  # noqa: E731
    options = EvalOptions(progress=False, resamples=10)
    model.loads = 0
    cold = evaluate(lazy(), options)
    cached = evaluate(lazy(), options)
    assert cached["timings"]["embedding_cache_hits"] == 1 and cached["metrics"] == cold["metrics"]
    own = model is InvertedGeometry
    assert cold["model"]["own_geometry"] is own
    assert model.loads == (2 if own else 1)        # default geometry: the cached run loads nothing
    if own:                                        # the control: the hooks changed the scores
        plain = evaluate(HashEncoder(), options)["metrics"]
        assert plain["d_corr"]["value"] == pytest.approx(-cold["metrics"]["d_corr"]["value"])
        assert plain["text_query/precision"] != cold["metrics"]["text_query/precision"]


def test_one_model_has_one_identity_lazy_or_eager(tmp_path: Path, subset: Path) -> None:
    """The lazy wrapper reports the eager model's weights fingerprint and recipe: the second path's run is a
    cache hit into the same result folder, and a cached run loads nothing."""
    folder = save_random_hf_clip(tmp_path / "tiny", "tiny")
    options = EvalOptions(data=str(subset), progress=False, resamples=10, text_only=True)
    lazy = load_encoder(str(folder), lazy=True)
    first = evaluate(lazy, options)
    eager = load_encoder(str(folder))
    assert lazy.fingerprint() == eager.fingerprint() and lazy.fingerprint().startswith("xxh3:")
    assert lazy.embedding_recipe() == json.loads(json.dumps(eager.embedding_recipe(), default=str))
    second = evaluate(eager, options)
    assert second["timings"]["embedding_cache_hits"] == 1 and second["metrics"] == first["metrics"]
    assert save_result(first, tmp_path / "r") == save_result(second, tmp_path / "r")
    again = load_encoder(str(folder), lazy=True)
    assert evaluate(again, options)["timings"]["embedding_cache_hits"] == 1 and again._loaded is None


def test_an_image_adapter_is_scored_on_images_without_declaring_it(tmp_path: Path) -> None:
    from hierarcaps.models.registry import folder_adapter

    class Pictures(HashEncoder):
        def _embed_images(self, images, *, batch_size, workers, progress):  # type: ignore[no-untyped-def]
            return np.ones((len(images), 16))

    assert Pictures().has_images and not HashEncoder().has_images
    clip = save_random_hf_clip(tmp_path / "clip", "tiny")
    assert folder_adapter(clip)[2] and load_encoder(str(clip), lazy=True).has_images
    text = tmp_path / "text"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"model_type": "bert"}))     # no vision config: text only
    assert not folder_adapter(text)[2]
