"""Hierarchy records, the official file formats, shipped data, images and `datasets` export."""

from .csvio import parse_file, read_hierarchies, write_csv
from .official import load_official
from .records import Hierarchy, content_checksum
from .splits import check_leakage, offline_train_split, require_no_leakage

__all__ = [
    "Hierarchy", "check_leakage", "content_checksum", "load_official", "offline_train_split", "parse_file",
    "read_hierarchies", "require_no_leakage", "write_csv",
]
