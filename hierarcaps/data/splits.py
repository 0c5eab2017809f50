"""Training splits that cannot leak the test set, and the leakage check behind them.

Leakage means a test image, or a test tier-3/4 caption (the specific, image-bound ones), reaching training
anywhere: at any tier of a training row, positive or negative. Generic strings such as "animal" recur naturally
across images and are not leakage.

Both are compared in forms a copy cannot escape by spelling: captions by ``textsafe.caption_key`` (NFKC, case,
zero-width and format characters, whitespace runs, punctuation at either end, Unicode's confusable skeleton),
images by their COCO image id whatever the file-name scheme (``COCO_val2014_000000301718.jpg``,
``val2017/000000301718.jpg``, a URL of either), and by content (SHA-256 against the shipped test-image digests)
where the training images are on disk. ``leakage``, ``finetune --train`` and ``export --train`` all call
:func:`check_leakage`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DataError
from ..textsafe import caption_key, comparison_key
from .official import load_official
from .records import Hierarchy

SPECIFIC_TIERS = (3, 4)
COCO_FILE = re.compile(r"^(?:coco_[a-z]+\d{4}_(\d{1,12})|(\d{12}))\.(?:jpe?g|png)$", re.IGNORECASE)
"""COCO file names: ``COCO_<split><year>_<12 digits>.jpg`` (2014) or ``<12 digits>.jpg`` (2017)."""


def specific_captions(records: Sequence[Hierarchy], tiers: Sequence[int] = SPECIFIC_TIERS) -> set[str]:
    """Caption keys of the positive captions at the given 1-based tiers."""
    return {caption_key(r.positive[k - 1]) for r in records for k in tiers if k <= len(r.positive)}


def every_caption(record: Hierarchy) -> set[str]:
    """Caption keys of every text a row holds: each tier of its positive and its negative chain."""
    return {caption_key(text) for text in (*record.positive, *(record.negative or ()))}


def image_key(image_file: str) -> str:
    """One key per picture: ``coco:<id>`` for any COCO file-name scheme, else the case-folded file name."""
    name = comparison_key(Path(image_file.replace("\\", "/")).name)
    match = COCO_FILE.match(name)
    return f"coco:{int(match.group(1) or match.group(2))}" if match else f"file:{name}"


@dataclasses.dataclass
class LeakageReport:
    """What a training file shares with the test set."""

    shared_images: list[str]
    overlapping_rows: list[str]
    kept: int

    def summary(self) -> str:
        return (f"{len(self.shared_images)} image(s) shared with the test set; "
                f"{len(self.overlapping_rows)} row(s) repeat a test tier-3/4 caption; {self.kept} row(s) kept")


def shared_images(train: Sequence[Hierarchy], test: Sequence[Hierarchy],
                  train_digests: Mapping[str, str] | None = None,
                  test_digests: Mapping[str, str] | None = None) -> list[str]:
    """Training image files that are test images: the same COCO id or file name, or (where digests of the
    training files are given) the same bytes as a test image."""
    test_keys = {image_key(r.image_file) for r in test if r.image_file}
    same_bytes = set((test_digests or {}).values())
    found = {r.image_file for r in train if r.image_file and image_key(r.image_file) in test_keys}
    found |= {name for name, digest in (train_digests or {}).items() if digest in same_bytes}
    return sorted(found)


def check_leakage(train: Sequence[Hierarchy], test: Sequence[Hierarchy] | None = None, *,
                  train_digests: Mapping[str, str] | None = None,
                  test_digests: Mapping[str, str] | None = None) -> tuple[list[Hierarchy], LeakageReport]:
    """Rows of ``train`` that repeat no test tier-3/4 caption, plus a report of what was found.

    ``train_digests`` (file name -> SHA-256 of the training images at hand) catch renamed copies of test
    images; ``test_digests`` default to the shipped digests of the official test images. Shared images are
    reported, not dropped: :func:`require_no_leakage` refuses such files.
    """
    from .official import test_image_sha256

    test = load_official("test") if test is None else test
    test_digests = test_image_sha256() if test_digests is None else test_digests
    test_specific = specific_captions(test)
    shared = shared_images(train, test, train_digests, test_digests)
    overlapping = [r.id for r in train if every_caption(r) & test_specific]
    drop = set(overlapping)
    kept = [r for r in train if r.id not in drop]
    return kept, LeakageReport(shared, overlapping, len(kept))


def require_no_leakage(train: Sequence[Hierarchy], test: Sequence[Hierarchy] | None = None,
                       *, file: str | None = None) -> tuple[list[Hierarchy], LeakageReport]:
    """Refuse training data that shares images with the test set; drop rows repeating test captions."""
    kept, report = check_leakage(train, test)
    if report.shared_images:
        raise DataError(f"shares {len(report.shared_images)} image(s) with the HierarCaps test set "
                        f"(e.g. {report.shared_images[0]!r}); training on them would leak the benchmark",
                        file=file, field="image_url")
    return kept, report


def offline_train_split(expanded: Sequence[Hierarchy] | None = None, test: Sequence[Hierarchy] | None = None
                        ) -> list[Hierarchy]:
    """The expanded rows usable for training offline: non-test images, no repeated test captions.

    From the shipped files: 23,479 rows -> 18,770 on the 4,000 non-test images -> 18,694 without
    rows that repeat a test tier-3/4 caption.
    """
    expanded = load_official("test_expanded") if expanded is None else expanded
    test = load_official("test") if test is None else test
    test_images = {image_key(r.image_file) for r in test if r.image_file}
    other_images = [r for r in expanded if not r.image_file or image_key(r.image_file) not in test_images]
    kept, _ = check_leakage(other_images, test)
    return [dataclasses.replace(r, split="train_offline") for r in kept]
