"""Training splits that cannot leak the test set, and the leakage check behind them.

Leakage means a test image, or a test tier-3/4 caption (the specific, image-bound ones), reaching training.
Generic strings such as "animal" recur naturally across images and are not leakage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..errors import DataError
from .official import load_official
from .records import Hierarchy

SPECIFIC_TIERS = (3, 4)


def _key(text: str) -> str:
    return text.strip().casefold()


def specific_captions(records: Sequence[Hierarchy], tiers: Sequence[int] = SPECIFIC_TIERS) -> set[str]:
    """Case-folded positive captions at the given 1-based tiers."""
    return {_key(r.positive[k - 1]) for r in records for k in tiers if k <= len(r.positive)}


@dataclasses.dataclass
class LeakageReport:
    """What a training file shares with the test set."""

    shared_images: list[str]
    overlapping_rows: list[str]
    kept: int

    def summary(self) -> str:
        return (f"{len(self.shared_images)} image(s) shared with the test set; "
                f"{len(self.overlapping_rows)} row(s) repeat a test tier-3/4 caption; {self.kept} row(s) kept")


def check_leakage(train: Sequence[Hierarchy], test: Sequence[Hierarchy] | None = None
                  ) -> tuple[list[Hierarchy], LeakageReport]:
    """Rows of ``train`` that repeat no test tier-3/4 caption, plus a report of what was found.

    Shared images are reported, not dropped: :func:`require_no_leakage` refuses such files.
    """
    test = load_official("test") if test is None else test
    test_images = {r.image_file for r in test if r.image_file}
    test_specific = specific_captions(test)
    shared = sorted({r.image_file for r in train if r.image_file in test_images})
    overlapping = [r.id for r in train if specific_captions([r]) & test_specific]
    drop = set(overlapping)
    kept = [r for r in train if r.id not in drop]
    return kept, LeakageReport(shared, overlapping, len(kept))


def require_no_leakage(train: Sequence[Hierarchy], test: Sequence[Hierarchy] | None = None,
                       *, file: str | None = None) -> tuple[list[Hierarchy], LeakageReport]:
    """Refuse training data that shares images with the test set; drop rows repeating test captions."""
    kept, report = check_leakage(train, test)
    if report.shared_images:
        raise DataError(f"shares {len(report.shared_images)} image(s) with the HierarCaps test set "
                        f"(e.g. {report.shared_images[0]}); training on them would leak the benchmark",
                        file=file, field="image_url")
    return kept, report


def offline_train_split(expanded: Sequence[Hierarchy] | None = None, test: Sequence[Hierarchy] | None = None
                        ) -> list[Hierarchy]:
    """The expanded rows usable for training offline: non-test images, no repeated test captions.

    From the shipped files: 23,479 rows -> 18,770 on the 4,000 non-test images -> 18,736 without
    rows that repeat a test tier-3/4 caption.
    """
    expanded = load_official("test_expanded") if expanded is None else expanded
    test = load_official("test") if test is None else test
    test_images = {r.image_file for r in test}
    other_images = [r for r in expanded if r.image_file not in test_images]
    kept, _ = check_leakage(other_images, test)
    return [dataclasses.replace(r, split="train_offline") for r in kept]
