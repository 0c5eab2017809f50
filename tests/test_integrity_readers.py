"""Every reader bounded and typed: configs, hierarchy parquet files, result folders, image folders and images,
archives, model folders and memories. Each crafted input ends in one line and exit 1 (bombs within 1 GB and
20 s, measured in a fresh process), and nothing is written outside its folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hierarcaps.cli import main
from hierarcaps.data import load_official, write_csv
from hierarcaps.data.csvio import parse_file, write_parquet
from hierarcaps.data.tables import MAX_ROWS
from hierarcaps.errors import HierarcapsError
from hierarcaps.generation.config import load_config

from .measured_cli import assert_one_line_failure, run_measured

REPO = Path(__file__).resolve().parents[1]


# -- configs -------------------------------------------------------------------------------------------------

def config_folder(tmp_path: Path, text: str) -> Path:
    from hierarcaps.generation.prompts import builtin_folder

    shutil.copytree(builtin_folder(), tmp_path / "prompts")
    (tmp_path / "captions.txt").write_text("a dog on a beach\n")
    (tmp_path / "run.yaml").write_text(text.replace("input: captions.txt", "input: captions.txt\nprompts: prompts"))
    return tmp_path / "run.yaml"


def laughs(levels: int) -> str:
    lines = ["input: captions.txt", "lol0: &l0 [ha, ha]"]
    lines += [f"lol{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("text", "expect"), [
    (laughs(30), "expands to more than"),                                    # 2^30 values from 30 lines
    (laughs(80), "more than 64 aliases"),
    ("input: captions.txt\ninput: other.txt\n", "appears twice"),
    ("input: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than"),
    ("input: captions.txt\nnli: {entail_threshold: 7}\n", "field 'nli.entail_threshold': must be at least 0"),
    ("input: captions.txt\nshard_size: '64'\n", "field 'shard_size': must be int"),
    ("input: captions.txt\nllm: {temperature: .nan}\n", "must be a finite number"),
    ("input: captions.txt\nllm: [1, 2]\n", "field 'llm': expected a mapping"),
    ("input: captions.txt\nllm: {backend: vlm}\n", "must be one of transformers, vllm"),
    ("input: captions.txt\nnli: {scratch: {hiden_size: 8}}\n", "nli.scratch.hiden_size': not a BertConfig setting"),
    ("input: !!python/object/apply:os.system [touch pwned]\n", "not valid YAML"),
])
def test_a_bad_config_is_one_line_before_any_work(tmp_path: Path, text: str, expect: str) -> None:
    config = config_folder(tmp_path, text)
    assert_one_line_failure(["generate", "--config", str(config), "--dry-run"], tmp_path, expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.txt", "peak_kb", "prompts", "run.yaml"]


CONFIG_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)
SECTION_KEYS = {"llm": ["backend", "max_new_tokens", "temperature", "top_p", "batch_size", "dtype", "engine_args"],
                "nli": ["entail_threshold", "batch_size", "scratch", "generic_not_longer"],
                "distill": ["lr", "steps", "val_fraction", "scratch"], "": ["shard_size", "seed", "limit"]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(sorted(SECTION_KEYS)), data=st.data())
def test_fuzzed_config_values_load_typed_or_fail_with_a_data_error(tmp_path: Path, section: str, data) -> None:
    import yaml

    key = data.draw(st.sampled_from(SECTION_KEYS[section]))
    value = data.draw(CONFIG_VALUES)
    document = {"input": "captions.txt", **({section: {key: value}} if section else {key: value})}
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    (tmp_path / "captions.txt").write_text("x\n")
    try:
        config = load_config(path)
    except HierarcapsError as exc:
        assert "\n" not in str(exc)
        return
    loaded = getattr(config, section) if section else config
    assert isinstance(getattr(loaded, key), (type(value), float, type(None), dict)), (key, value)


# -- hierarchy parquet files ------------------------------------------------------------------------------

def parquet_with(path: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_a_dictionary_bomb_parquet_is_refused_from_its_dictionary(tmp_path: Path) -> None:
    import pyarrow as pa

    rows = 200_000
    long = "x" * 100_000                                             # 100 KB once, 20 GB decoded
    indices = pa.array(np.zeros(rows, np.int32))
    ids = pa.array([str(i) for i in range(rows)])
    text = pa.DictionaryArray.from_arrays(indices, pa.array([long]))
    tiers = pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * 1), text)
    bomb = parquet_with(tmp_path / "bomb.parquet", id=ids, positive=tiers)
    assert bomb.stat().st_size < 5_000_000
    assert_one_line_failure(["validate", str(bomb)], tmp_path, "once decoded")


def test_too_many_rows_a_wrong_type_and_nulls_are_named(tmp_path: Path) -> None:
    import pyarrow as pa

    rows = MAX_ROWS + 1
    ids = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int8)), pa.array(["a"]))
    many = parquet_with(tmp_path / "many.parquet", id=ids, positive=pa.array([None] * rows, pa.list_(pa.string())))
    assert_one_line_failure(["validate", str(many)], tmp_path, f"more than the limit of {MAX_ROWS}")
    typed = parquet_with(tmp_path / "typed.parquet", id=["0"], positive=[1])
    assert_one_line_failure(["validate", str(typed)], tmp_path, "field 'positive': type int64, expected list<string>")
    nulls = parquet_with(tmp_path / "nulls.parquet", id=["0", "1"],
                         positive=pa.array([["a", "b", "c", "d"], None], pa.list_(pa.string())))
    records, problems = parse_file(nulls)
    assert len(records) == 1 and [(p.row, p.field) for p in problems] == [(2, "positive")]


def test_a_valid_parquet_still_reads(tmp_path: Path) -> None:
    records = load_official("test")[:20]
    path = write_parquet(records, tmp_path / "ok.parquet")
    parsed, problems = parse_file(path)
    assert problems == [] and [r.positive for r in parsed] == [r.positive for r in records]


# -- result folders, image folders and other special files -----------------------------------------------------

def test_report_walks_regular_files_only_and_bounds_each(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    board_result = next((REPO / "leaderboard" / "entries").glob("*/*/result.json"))
    shutil.copy(board_result, folder / "good.json")
    os.mkfifo(folder / "pipe.json")                                # opening it would block forever
    (folder / "loop").symlink_to(folder)                           # a link back to the folder
    (folder / "huge.json").write_text('{"model": {}, "pad": "' + "x" * (5 * 2**20) + '"}')
    assert main(["report", str(folder), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1           # the one result (board entries hold no baselines)
    assert main(["report", str(folder / "pipe.json")]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert main(["report", str(folder / "huge.json")]) == 1
    assert "over the limit" in capsys.readouterr().err


def test_zeroshot_passes_over_special_files_in_image_folders(tmp_path: Path, tiny_clip: Path,
                                                             test_image_dir: Path) -> None:
    images = tmp_path / "classes"
    for name, count in (("dog", 2), ("cat", 2)):
        (images / name).mkdir(parents=True)
        for i, source in enumerate(sorted(test_image_dir.glob("*.jpg"))[:count]):
            shutil.copy(source, images / name / f"{i}.jpg")
    os.mkfifo(images / "dog" / "blocking.jpg")
    from hierarcaps.harness.zeroshot import image_folder

    paths, labels, names = image_folder(images)
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    assert len(paths) == 4 and names == ["cat", "dog"]
    assert_one_line_failure(["zeroshot", "--model", "minilm", "--images", str(images)], tmp_path, "text-only model")


# -- images: the same pixels in evaluate and in the datasets export -----------------------------------------------

def odd_images(folder: Path) -> dict[str, Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    rotated = Image.fromarray(pixels)
    exif = rotated.getexif()
    exif[0x0112] = 6                                                # "rotate 90 CW to view"
    rotated.save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    deep = (rng.integers(0, 65535, (20, 30))).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")
    return {"rotated": folder / "rotated.jpg", "deep": folder / "deep.png"}


def test_exif_orientation_and_16_bit_images_decode_identically_in_evaluate_and_the_export(tmp_path: Path) -> None:
    from hierarcaps.data.hf import to_dataset
    from hierarcaps.data.images import open_image
    from hierarcaps.data.records import Hierarchy

    files = odd_images(tmp_path / "img")
    rotated = open_image(files["rotated"])
    assert rotated.size == (24, 40)                                 # turned upright: width and height swapped
    deep = np.asarray(open_image(files["deep"]))
    from PIL import Image

    raw = np.asarray(Image.open(files["deep"]), dtype=np.float64)
    assert np.abs(deep[..., 0] - raw / 257).max() <= 0.5            # scaled, not clipped to white
    assert (np.asarray(Image.open(files["deep"]).convert("RGB")) == 255).mean() > 0.9   # what clipping gives
    records = [Hierarchy(name, ("a", "b", "c", "d"), image_url=f"http://x/{p.name}", image_file=p.name)
               for name, p in files.items()]
    dataset = to_dataset(records, {p.name: p for p in files.values()}, embed_images=True)
    for row, path in zip(dataset, files.values()):
        from hierarcaps.data.images import rgb

        assert np.array_equal(np.asarray(rgb(row["image"])), np.asarray(open_image(path))), path.name


def test_an_image_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)    # 900 MP, 2.7 GB decoded
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "big.png").write_bytes(png)
    from hierarcaps.data.images import open_image

    with pytest.raises(HierarcapsError, match=r"pixels|cannot decode"):
        open_image(folder / "big.png")


# -- archives -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def submission_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from .test_hostile_inputs import make_submission

    folder = make_submission(tmp_path_factory.mktemp("sub") / "sub")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def zip_with(path: Path, files: dict[str, bytes], tweak=None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(f"sub/{name}")
            if tweak:
                tweak(info)
            archive.writestr(info, data)
    return path


def test_encrypted_duplicate_and_special_zip_members_are_refused(tmp_path: Path, submission_files) -> None:
    import warnings

    def fifo(info: zipfile.ZipInfo) -> None:
        info.external_attr = (stat.S_IFIFO | 0o644) << 16

    special = zip_with(tmp_path / "special.zip", submission_files, fifo)
    assert_one_line_failure(["leaderboard", "validate", str(special)], tmp_path, "not a regular file")
    duplicate = tmp_path / "duplicate.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(duplicate, "w") as archive:
        warnings.simplefilter("ignore")
        for name, data in submission_files.items():
            archive.writestr(f"sub/{name}", data)
        archive.writestr("sub/SUBMISSION.json", b"{}")
    assert_one_line_failure(["leaderboard", "validate", str(duplicate)], tmp_path, "a second member of the same name")
    encrypted = bytearray(zip_with(tmp_path / "plain.zip", submission_files).read_bytes())
    for signature in (b"PK\x03\x04", b"PK\x01\x02"):               # set the encryption flag in every header
        start = 0
        while (start := encrypted.find(signature, start)) >= 0:
            offset = start + (6 if signature == b"PK\x03\x04" else 8)
            encrypted[offset] |= 0x1
            start += 4
    (tmp_path / "encrypted.zip").write_bytes(bytes(encrypted))
    assert_one_line_failure(["leaderboard", "validate", str(tmp_path / "encrypted.zip")], tmp_path, "encrypted")


# -- model folders, specs and memories ----------------------------------------------------------------------------

def copy_of(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def test_model_folders_that_cannot_be_loaded_safely_are_one_line(tmp_path: Path, tiny_clip: Path) -> None:
    pickles = copy_of(tiny_clip, tmp_path / "pickles")
    (pickles / "model.safetensors").rename(pickles / "pytorch_model.bin")
    assert_one_line_failure(["evaluate", "--model", str(pickles), "--text-only"], tmp_path, "only pickle weights")
    pointer = copy_of(tiny_clip, tmp_path / "pointer")
    (pointer / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    assert_one_line_failure(["evaluate", "--model", str(pointer), "--text-only"], tmp_path, "Git LFS pointer")
    for name, text in (("empty", ""), ("list", "[1, 2]"), ("deep", "[" * 100_000 + "]" * 100_000)):
        broken = copy_of(tiny_clip, tmp_path / name)
        (broken / "config.json").write_text(text)
        assert_one_line_failure(["evaluate", "--model", str(broken), "--text-only"], tmp_path, "config.json")
    checkpoint = copy_of(tiny_clip, tmp_path / "checkpoint")
    (checkpoint / "hierarcaps_model.json").write_text('{"spec_prefix": "evil:"}')
    assert_one_line_failure(["evaluate", "--model", str(checkpoint), "--text-only"], tmp_path, "spec_prefix")


@pytest.mark.integration
def test_code_inside_a_model_folder_never_runs(tmp_path: Path, tiny_clip: Path) -> None:
    folder = copy_of(tiny_clip, tmp_path / "remote")
    marker = tmp_path / "code-ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                      "from transformers import CLIPModel as Custom\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "custom.Custom", "AutoConfig": "custom.Custom"}
    (folder / "config.json").write_text(json.dumps(config))
    run_measured(["evaluate", "--model", str(folder), "--text-only", "--quiet", "--out", str(tmp_path / "r")], tmp_path)
    assert not marker.exists()


def test_a_reco_model_whose_base_is_itself_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "loop"
    folder.mkdir()
    (folder / "reco.json").write_text(json.dumps({"base": f"reco:{folder}", "memory": "m", "sides": [],
                                                  "fusion": {"kind": "mean", "dim": 8}, "config": {"k": 1}}))
    assert_one_line_failure(["evaluate", "--model", f"reco:{folder}"], tmp_path, "loops")


def test_memories_with_nan_rows_or_disagreeing_dimensions_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((50, 8)).astype(np.float32)
    nan = good.copy()
    nan[7, 3] = np.nan
    np.savez(tmp_path / "nan.npz", image=nan, text=good)
    assert_one_line_failure(["reco", "memory", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "m1")], tmp_path,
                            "row 7 is NaN")
    np.savez(tmp_path / "dims.npz", image=good, text=rng.standard_normal((50, 16)).astype(np.float32))
    assert_one_line_failure(["reco", "memory", str(tmp_path / "dims.npz"), "--out", str(tmp_path / "m2")], tmp_path,
                            "dimension")
    np.savez(tmp_path / "ok.npz", image=good, text=good)
    assert main(["reco", "memory", str(tmp_path / "ok.npz"), "--out", str(tmp_path / "m3")]) == 0
    np.save(tmp_path / "m3" / "text.npy", good[:40])               # a part of another build
    from hierarcaps.reco.memory import Memory

    with pytest.raises(HierarcapsError, match="shape"):
        Memory(tmp_path / "m3")


def test_a_compressed_npz_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((200_000, 512), np.float32))           # 400 MB of zeros
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.npy", buffer.getvalue())
        archive.writestr("text.npy", buffer.getvalue())
    assert (tmp_path / "bomb.npz").stat().st_size < 2_000_000
    assert_one_line_failure(["reco", "memory", str(tmp_path / "bomb.npz"), "--out", str(tmp_path / "m")], tmp_path,
                            "zip bomb")


def test_a_training_file_that_is_not_a_file_is_one_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "train.csv")
    assert_one_line_failure(["leakage", str(tmp_path / "train.csv")], tmp_path, "not a regular file")
    write_csv(load_official("test")[:3], tmp_path / "ok.csv", fmt="test")
    assert main(["validate", str(tmp_path / "ok.csv")]) == 0
