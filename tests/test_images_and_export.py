"""Image resolution (local folder, cache, download with retries and checksums) and the `datasets` export."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from hierarcaps.data import load_official
from hierarcaps.data.fetch import ChecksumMismatch
from hierarcaps.data.images import ImageStore, open_image
from hierarcaps.errors import DataError, HierarcapsError, ImagesUnavailableError


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the first request for each file fails with 503 to exercise retries."""

    failed: set[str]

    def do_GET(self) -> None:
        if self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server standing in for the image host."""
    root = tmp_path / "served"
    root.mkdir()

    def handler(*args: object, **kwargs: object) -> FlakyHandler:
        return FlakyHandler(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

    FlakyHandler.failed = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def test_local_folder_resolves_and_verifies(test_image_dir: Path) -> None:
    test = load_official("test")
    paths = ImageStore(test_image_dir, download=False).resolve(test, progress=False)
    assert len(paths) == 1000
    assert open_image(paths[test[0].image_file]).mode == "RGB"


def test_missing_images_offline_give_one_clear_error(tmp_path: Path) -> None:
    test = load_official("test")
    with pytest.raises(ImagesUnavailableError, match=r"1000 of 1000 images are missing.*--image-dir"):
        ImageStore(tmp_path, download=False).resolve(test, progress=False)


def test_download_retries_verifies_and_caches(mirror: tuple[str, Path], test_image_dir: Path,
                                              isolated_cache: Path) -> None:
    url, served = mirror
    records = load_official("test")[:3]
    for record in records:
        shutil.copy(test_image_dir / record.image_file, served / record.image_file)
    store = ImageStore(download=True, mirror=url)
    paths = store.resolve(records, progress=False)
    assert all(p.parent == isolated_cache / "images" for p in paths.values())
    assert [p.read_bytes() for p in paths.values()] == [(served / r.image_file).read_bytes() for r in records]
    for record in records:
        (served / record.image_file).unlink()
    assert ImageStore(download=True, mirror=url).resolve(records, progress=False) == paths  # from the cache


def test_download_with_wrong_bytes_is_rejected_and_not_kept(mirror: tuple[str, Path], test_image_dir: Path,
                                                           isolated_cache: Path) -> None:
    url, served = mirror
    record = load_official("test")[0]
    (served / record.image_file).write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="did not match"):
        ImageStore(download=True, mirror=url).resolve([record], progress=False)
    assert not (isolated_cache / "images" / record.image_file).exists()


def upstream_layout(served: Path, images: Path, records: list, *, full_size: bool = False) -> str:
    """Lay the served folder out like the upstream repository's raw files; returns the path prefix."""
    from PIL import Image

    from hierarcaps.data.images import THUMBNAIL_FOLDER
    from hierarcaps.data.official import manifest

    prefix = f"/TAU-VAILab/hierarcaps/{manifest()['upstream']['commit']}/"
    folder = served / prefix.strip("/") / THUMBNAIL_FOLDER
    folder.mkdir(parents=True)
    for record in records:
        if full_size:     # the COCO original: other pixels, other bytes
            Image.open(images / record.image_file).resize((640, 480)).save(folder / record.image_file)
        else:
            shutil.copy(images / record.image_file, folder / record.image_file)
    return prefix


def test_default_download_source_is_the_protocol_thumbnails(mirror: tuple[str, Path], test_image_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            isolated_cache: Path) -> None:
    from hierarcaps.data import images as images_module

    url, served = mirror
    records = load_official("test")[:4]
    prefix = upstream_layout(served, test_image_dir, records)
    monkeypatch.setattr(images_module, "thumbnail_base",
                        lambda: url + prefix + images_module.THUMBNAIL_FOLDER)
    paths = ImageStore(download=True).resolve(records, progress=False)
    assert all((test_image_dir / name).read_bytes() == path.read_bytes() for name, path in paths.items())


def test_the_full_size_originals_never_pass_for_the_protocol_images(mirror: tuple[str, Path],
                                                                    test_image_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    isolated_cache: Path) -> None:
    from hierarcaps.data import images as images_module
    from hierarcaps.data.records import Hierarchy

    url, served = mirror
    records = load_official("test")[:2]
    prefix = upstream_layout(served, test_image_dir, records, full_size=True)
    monkeypatch.setattr(images_module, "thumbnail_base", lambda: url + prefix + images_module.THUMBNAIL_FOLDER)
    with pytest.raises(ChecksumMismatch):
        ImageStore(download=True).resolve(records, progress=False)
    # the COCO source takes them, into its own cache, and names its own recipe
    coco = [Hierarchy(**{**r.to_dict(), "image_url": url + prefix + images_module.THUMBNAIL_FOLDER + r.image_file})
            for r in records]
    paths = ImageStore(download=True, source="coco").resolve(coco, progress=False)
    assert all(p.parent == isolated_cache / "images-coco" for p in paths.values())
    assert not (isolated_cache / "images").exists() or not any((isolated_cache / "images").iterdir())
    assert images_module.image_recipe("coco") != images_module.image_recipe("thumbnails")


def test_unreachable_sources_fail_at_once_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from hierarcaps.data import images as images_module

    with socket.socket() as probe:                       # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(images_module, "thumbnail_base", lambda: f"http://127.0.0.1:{port}/")
    calls = []
    download = images_module.download
    monkeypatch.setattr(images_module, "download", lambda *a, **k: calls.append(a) or download(*a, **k))
    with pytest.raises(ImagesUnavailableError, match=r"connection refused.*--image-dir"):
        ImageStore(tmp_path, download=True).resolve(load_official("test"), progress=False)
    assert len(calls) < 40                                    # not 1,000 images x 3 retries with back-off


def test_local_file_with_checksum_mismatch_is_named(tmp_path: Path, test_image_dir: Path) -> None:
    record = load_official("test")[0]
    shutil.copy(test_image_dir / load_official("test")[1].image_file, tmp_path / record.image_file)
    with pytest.raises(ChecksumMismatch, match=record.image_file):
        ImageStore(tmp_path, download=False).resolve([record], progress=False)


def test_truncated_and_non_image_files_name_the_file(tmp_path: Path, test_image_dir: Path) -> None:
    name = load_official("test")[0].image_file
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((test_image_dir / name).read_bytes()[:2000])
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    for path in (truncated, text):
        with pytest.raises(DataError, match="cannot decode image") as info:
            open_image(path)
        assert info.value.file == str(path)


def test_export_loads_with_datasets_including_images(tmp_path: Path, test_image_dir: Path) -> None:
    import datasets

    from hierarcaps.data.hf import export

    out = export(tmp_path / "hc", image_dir=test_image_dir)
    test = datasets.load_dataset(str(out), "test")["test"]
    expanded = datasets.load_dataset(str(out), "test_expanded")["test"]
    assert test.num_rows == 1000 and expanded.num_rows == 23479
    assert set(test.features) == {"id", "positive", "negative", "image_url", "image_file", "source", "split", "image"}
    assert test[0]["image"].size == open_image(test_image_dir / test[0]["image_file"]).size
    assert test[3]["positive"] == list(load_official("test")[3].positive)
    assert expanded[10]["negative"] == list(load_official("test_expanded")[10].negative)
    card = (out / "README.md").read_text()
    assert "config_name: test_expanded" in card and "ba22b8914db10973e38d2c03f08bb4dce7ba118e" in card
    assert "thumbnails" in card and "No images are embedded" not in card and "@inproceedings" in card
    check_card_metadata(out / "README.md", {"test": 1000, "test_expanded": 23479})
    # a user with plain `datasets` (this package never imported), streaming too
    script = (f"import sys, datasets\n"
              f"rows = datasets.load_dataset({str(out)!r}, 'test', split='test', streaming=True)\n"
              f"first = next(iter(rows))\n"
              f"assert first['image'].size == (256, 256) and len(first['positive']) == 4, first\n"
              f"assert not any(m.startswith('hierarcaps') for m in sys.modules)\n"
              f"print(datasets.load_dataset({str(out)!r}, 'test_expanded', split='test').num_rows)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "23479", done.stderr[-2000:]
    assert "warn" not in done.stderr.lower() and "malformed" not in done.stderr, done.stderr[-2000:]


def check_card_metadata(card_path: Path, rows: dict[str, int]) -> None:
    """The card parses with huggingface_hub and carries what the Hub's dataset cards ask for."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    data = DatasetCard.load(card_path).data.to_dict()
    for key in ("license", "license_name", "license_link", "size_categories", "source_datasets",
                "annotations_creators", "task_categories", "tags", "configs", "dataset_info", "pretty_name"):
        assert data.get(key), key
    infos = {i["config_name"]: i for i in data["dataset_info"]}
    assert {name: i["splits"][0]["num_examples"] for name, i in infos.items()} == rows
    assert all(i["splits"][0]["num_bytes"] > 0 and i["download_size"] > 0 for i in infos.values())
    assert infos["test"]["features"][1] == {"name": "positive", "list": "string"}     # the current syntax
    parsed = DatasetInfosDict.from_directory(str(card_path.parent))   # what load_dataset reads
    assert {name: info.splits[next(iter(info.splits))].num_examples for name, info in parsed.items()} == rows


def test_export_with_a_train_file_adds_the_config_and_refuses_leaks(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    import datasets

    from hierarcaps.data import offline_train_split, write_csv
    from hierarcaps.data.hf import export

    train = write_csv(offline_train_split()[:50], tmp_path / "train.csv")
    out = export(tmp_path / "hc", configs=("test",), train=train, images="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert datasets.load_dataset(str(out), "train")["train"].num_rows == 50
    printed = capfd.readouterr().err               # `datasets` logs through its own stderr handler
    assert "warn" not in printed.lower() and "malformed" not in printed, printed
    check_card_metadata(out / "README.md", {"test": 1000, "train": 50})
    assert "No images are embedded" in (out / "README.md").read_text()        # the card says what is missing
    check_card_metadata(out / "README.md", {"test": 1000, "train": 50})
    test_images = {r.image_file for r in load_official("test")}
    leaky_rows = [r for r in load_official("test_expanded") if r.image_file in test_images][:5]
    leaky = write_csv(leaky_rows, tmp_path / "leaky.csv")
    with pytest.raises(DataError, match="shares"):
        export(tmp_path / "hc2", configs=("test",), train=leaky, images="skip")
    assert not (tmp_path / "hc2").exists()


def test_export_require_without_images_fails_without_leaving_output(tmp_path: Path) -> None:
    from hierarcaps.data.hf import export

    with pytest.raises(ImagesUnavailableError):
        export(tmp_path / "hc", images="require", image_dir=tmp_path / "nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_replaces_only_an_earlier_export_and_only_with_overwrite(tmp_path: Path) -> None:
    from hierarcaps.data.hf import export

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep").write_text("x")
    for overwrite in (False, True):                  # a folder it did not write is never replaced
        with pytest.raises(HierarcapsError, match="not written by `hierarcaps export`"):
            export(tmp_path / "mine", configs=("test",), images="skip", overwrite=overwrite)
    assert (tmp_path / "mine" / "keep").read_text() == "x"
    export(tmp_path / "hc", configs=("test",), images="skip")
    with pytest.raises(HierarcapsError, match="--overwrite"):
        export(tmp_path / "hc", configs=("test",), images="skip")
    export(tmp_path / "hc", configs=("test", "test_expanded"), images="skip", overwrite=True)
    assert (tmp_path / "hc" / "data" / "test_expanded").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hc", "mine"]


def test_export_and_load_refuse_to_go_on_silently_without_images(tmp_path: Path) -> None:
    import hierarcaps
    from hierarcaps.data.hf import export

    with pytest.raises(ImagesUnavailableError, match="missing"):
        export(tmp_path / "hc", configs=("test",))                           # the default requires them
    with pytest.raises(HierarcapsError, match="does not exist"):
        hierarcaps.load("test", image_dir=tmp_path / "no-such-folder")


def test_load_returns_datasets_objects(test_image_dir: Path) -> None:
    import datasets

    import hierarcaps

    test = hierarcaps.load("test", image_dir=test_image_dir)
    assert isinstance(test, datasets.Dataset) and test.num_rows == 1000
    assert test[0]["image"].mode == "RGB"
    both = hierarcaps.load(image_dir=test_image_dir)
    assert isinstance(both, datasets.DatasetDict) and set(both) == {"test", "test_expanded"}
