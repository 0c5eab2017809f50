"""Leakage keys that survive spelling and placement: a test caption at any tier of a training row, positive or
negative, compared after NFKC, case, invisible characters, whitespace, edge punctuation and Unicode's confusable
skeleton; images by COCO id in any file-name scheme, and by content where the bytes are at hand. One function
(``check_leakage``) serves ``leakage``, ``finetune --train`` and ``export --train``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hierarcaps.cli import main
from hierarcaps.data import Hierarchy, load_official, write_csv
from hierarcaps.data.splits import check_leakage, image_key, offline_train_split

NEGATIVE = ("a", "b", "c", "d")


def disguised(caption: str) -> list[str]:
    """Ways to repeat a caption that a plain string comparison misses."""
    words = caption.split()
    return [
        "  ".join(words),                                    # doubled spaces
        "\u00a0".join(words),                                # no-break spaces
        caption[:2] + "\u200b" + caption[2:],               # a zero-width space inside the text
        caption.upper(),                                     # case
        "\uff41" + caption[1:] if caption[0] == "a" else "\ufeff" + caption,   # full-width letter / BOM
        caption + "\u00ad",                                  # a soft hyphen
        f" {caption}\t",                                     # surrounding whitespace
        caption.rstrip(".") if caption.endswith(".") else caption + ".",   # the final full stop
        f"“{caption}!”",                                     # quotes and other punctuation at the edges
        caption.replace("o", "\u043e", 1) if "o" in caption else caption.replace("a", "\u0430", 1),  # one Cyrillic
    ]


def test_a_repeated_test_caption_is_found_however_it_is_spelled() -> None:
    test = load_official("test")
    caption = test[3].positive[3]
    rows = [Hierarchy(str(i), ("thing", "object", "object here", text), NEGATIVE)
            for i, text in enumerate(disguised(caption))]
    clean = Hierarchy("clean", ("thing", "object", "object here", "a caption nobody wrote for the test set"), NEGATIVE)
    kept, report = check_leakage([*rows, clean], test)
    assert report.overlapping_rows == [r.id for r in rows]
    assert [r.id for r in kept] == ["clean"]                  # the control: an unrelated caption is kept


@pytest.mark.parametrize("place", ["positive tier 1", "positive tier 2", "negative tier 3", "negative tier 4"])
def test_a_test_caption_is_found_at_any_tier_of_either_chain(place: str) -> None:
    caption = load_official("test")[5].positive[2]
    chain, tier = place.split(" tier ")
    positive, negative = ["thing", "object", "object here", "an object over here"], list(NEGATIVE)
    (positive if chain == "positive" else negative)[int(tier) - 1] = caption
    row = Hierarchy("0", tuple(positive), tuple(negative))
    _, report = check_leakage([row], load_official("test"))
    assert report.overlapping_rows == ["0"]


def test_leakage_is_one_check_for_the_leakage_command_finetune_and_export(tmp_path: Path) -> None:
    from hierarcaps.data.hf import config_records
    from hierarcaps.finetune.data import training_records

    caption = load_official("test")[2].positive[3]
    rows = [Hierarchy("0", ("thing", "object", "object here", "an object over here"), ("a", "b", caption + " ", "d")),
            Hierarchy("1", ("thing", "object", "object here", "another object here"), NEGATIVE)]
    path = write_csv(rows, tmp_path / "train.csv")
    _, report = check_leakage(rows, load_official("test"))
    assert report.overlapping_rows == ["0"]
    assert [r.positive[3] for r in training_records(str(path))] == ["another object here"]
    assert [r.positive[3] for r in config_records("train", str(path))] == ["another object here"]


@pytest.mark.parametrize("name", [
    "COCO_val2014_000000301718.jpg", "000000301718.jpg", "val2017/000000301718.jpg",
    "http://images.cocodataset.org/val2017/000000301718.jpg", "COCO_train2014_000000301718.JPG",
    "coco_val2014_000000301718.jpeg",
])
def test_a_coco_image_is_one_key_in_every_file_name_scheme(name: str) -> None:
    assert image_key(name) == "coco:301718"
    assert image_key("000000301719.jpg") != image_key(name)        # the control: another picture


def test_a_test_image_named_as_in_coco_2017_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    test = load_official("test")
    number = test[0].image_file.split("_")[-1]                   # 000000xxxxxx.jpg
    row = Hierarchy("0", ("a", "b", "c", "d"), ("a", "e", "f", "g"), f"http://images.cocodataset.org/val2017/{number}",
                    number)
    path = write_csv([row], tmp_path / "train.csv")
    assert main(["leakage", str(path)]) == 1
    assert "1 image(s) shared with the test set" in capsys.readouterr().err


def test_a_renamed_copy_of_a_test_image_is_found_by_its_bytes(tmp_path: Path, test_image_dir: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    test = load_official("test")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(test_image_dir / test[7].image_file, images / "holiday.jpg")
    other = next(p for p in sorted(test_image_dir.glob("*.jpg")))
    (images / "unrelated.jpg").write_bytes(other.read_bytes()[:-10] + b"0123456789")   # other bytes
    rows = [Hierarchy("0", ("a", "b", "c", "d"), ("a", "e", "f", "g"), "http://x.org/holiday.jpg", "holiday.jpg"),
            Hierarchy("1", ("a", "b", "c", "e"), ("a", "e", "f", "g"), "http://x.org/unrelated.jpg", "unrelated.jpg")]
    path = write_csv(rows, tmp_path / "train.csv")
    assert main(["leakage", str(path)]) == 0                    # by name alone nothing is shared
    capsys.readouterr()
    assert main(["leakage", str(path), "--image-dir", str(images)]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["shared_images"] == 1 and "1 image(s) shared" in out.err


def test_the_offline_split_drops_rows_holding_a_test_caption_anywhere() -> None:
    train = offline_train_split()
    assert len(train) == 18694 and len({r.image_file for r in train}) == 4000
