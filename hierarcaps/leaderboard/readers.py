"""Reading submitted embeddings with bounded memory: every size is checked from the file's own header or
metadata before any array is inflated, and nothing that can carry code is ever unpickled.

- ``.npz``: each member's ``.npy`` header (dtype, shape) is read from the zip before loading; unknown members
  are refused; arrays load with ``allow_pickle=False``.
- ``.safetensors``: the JSON header (dtypes, shapes) is read and checked before the file is loaded.
- ``.parquet``: rows, uncompressed bytes, leaf values and the schema are checked from the footer; the columns
  are read with Arrow into numpy, never into Python objects per value.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .. import jsonfile
from .._io import npz_members
from ..errors import DataError

ARRAYS = ("root", "text", "image", "text_radii")
"""The only arrays a submission may hold."""
MAX_DIM = 4096
"""Embedding dimension (the largest published image-text embeddings are well below)."""
MAX_HEADER_BYTES = 2**20
"""A safetensors JSON header."""
MAX_PARQUET_BYTES = 512 * 2**20
"""Uncompressed bytes of an embeddings.parquet, from its footer."""
FLOAT_DTYPES = {"F16": np.dtype("<f2"), "BF16": np.dtype("<f4"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
"""The float dtypes a safetensors file may hold, as numpy reads them (bfloat16 widened to float32)."""


class UnreadableEmbeddings(Exception):
    """The embeddings file breaks a rule; the message names the array or column and the rule."""


def max_rows(expected: Mapping[str, int]) -> dict[str, int]:
    """Rows each array may have at most: the official count (the root has one)."""
    return {"root": 1, "text": expected["text"], "image": expected["image"], "text_radii": expected["text"]}


def check_declared(name: str, shape: tuple[int, ...], dtype: np.dtype, expected: Mapping[str, int]) -> None:
    """Refuse an array by its declaration alone: unknown name, non-float dtype, rank, rows or dimension."""
    if name not in ARRAYS:
        raise UnreadableEmbeddings(f"unknown array {name!r} (allowed: {', '.join(ARRAYS)})")
    if dtype.kind != "f":
        raise UnreadableEmbeddings(f"{name}: dtype {dtype}, expected floating point")
    vector = name in ("root", "text_radii")
    if len(shape) != (1 if vector else 2):
        raise UnreadableEmbeddings(f"{name}: shape {shape}, expected {'(n,)' if vector else '(rows, dim)'}")
    rows = 1 if name == "root" else shape[0]
    dim = shape[0] if name == "root" else (shape[1] if not vector else 1)
    if rows > max_rows(expected)[name]:
        raise UnreadableEmbeddings(f"{name}: {rows} rows, more than the {max_rows(expected)[name]} the test set has")
    if dim > MAX_DIM:
        raise UnreadableEmbeddings(f"{name}: dimension {dim}, over the limit of {MAX_DIM}")


def read_npz(path: Path, expected: Mapping[str, int]) -> dict[str, np.ndarray]:
    for name, shape, dtype, _ in npz_members(path):
        check_declared(name, shape, dtype, expected)
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def read_safetensors(path: Path, expected: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Every array of a ``.safetensors`` file, read from its own header's offsets after checking every
    declaration (bfloat16 is widened to float32 exactly, as numpy has no bfloat16)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UnreadableEmbeddings("truncated header")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise UnreadableEmbeddings(f"header of {length} bytes, over the limit of {MAX_HEADER_BYTES}")
        try:
            header = jsonfile.parse(handle.read(length), file=path.name)
        except DataError as exc:
            raise UnreadableEmbeddings(f"header: {exc.reason}") from None
        if not isinstance(header, dict):
            raise UnreadableEmbeddings("header is not a JSON object")
        arrays = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype_name, shape, offsets = (info.get(k) if isinstance(info, dict) else None
                                          for k in ("dtype", "shape", "data_offsets"))
            if dtype_name not in FLOAT_DTYPES or not isinstance(shape, list) or \
                    not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise UnreadableEmbeddings(f"{name}: dtype {dtype_name!r}, shape {shape!r}; expected a float array")
            dtype = FLOAT_DTYPES[dtype_name]
            check_declared(name, tuple(shape), dtype, expected)
            begin, end = _offsets(name, offsets, int(np.prod(shape)) * ITEM_BYTES[dtype_name], size - 8 - length)
            handle.seek(8 + length + begin)
            raw = np.frombuffer(handle.read(end - begin), dtype=np.uint16 if dtype_name == "BF16" else dtype)
            arrays[name] = _widened(raw, dtype_name).reshape(shape)
    return arrays


ITEM_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def _offsets(name: str, offsets: object, nbytes: int, data_bytes: int) -> tuple[int, int]:
    """A tensor's [begin, end) within the data section, checked against its declared size and the file."""
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise UnreadableEmbeddings(f"{name}: data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
        raise UnreadableEmbeddings(f"{name}: data_offsets {offsets} do not hold its {nbytes} bytes in the file")
    return begin, end


def _widened(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    """bfloat16 bits as float32 (the upper half of a float32's bits), other dtypes as stored (little-endian)."""
    if dtype_name == "BF16":
        return (raw.astype("<u4") << 16).view("<f4")
    return raw.astype(raw.dtype.newbyteorder("<"), copy=True)


PARQUET_COLUMNS = {"kind": "string", "id": "string", "embedding": "list<float>", "radius": "float"}


def _parquet_footer_checks(path: Path, expected: Mapping[str, int]) -> None:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    rows_allowed = 1 + expected["text"] + expected["image"]
    if meta.num_rows > rows_allowed:
        raise UnreadableEmbeddings(f"{meta.num_rows} rows, more than the {rows_allowed} the test set needs")
    names = set(meta.schema.to_arrow_schema().names)
    unknown, missing = names - set(PARQUET_COLUMNS), {"kind", "id", "embedding"} - names
    if unknown or missing:
        raise UnreadableEmbeddings(f"columns {sorted(names)}: expected kind, id, embedding and optionally radius")
    uncompressed = leaf_values = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            uncompressed += column.total_uncompressed_size
            if column.path_in_schema.startswith("embedding"):
                leaf_values += column.num_values
    if uncompressed > MAX_PARQUET_BYTES:
        raise UnreadableEmbeddings(f"{uncompressed} bytes uncompressed, over the limit of {MAX_PARQUET_BYTES}")
    if leaf_values > rows_allowed * MAX_DIM:
        raise UnreadableEmbeddings(f"{leaf_values} embedding values, more than {rows_allowed} rows of "
                                   f"dimension {MAX_DIM}")


def read_parquet(path: Path, expected: Mapping[str, int]) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Arrays and the ids of their rows from an ``embeddings.parquet`` (columns kind, id, embedding[, radius])."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    _parquet_footer_checks(path, expected)
    table = pq.read_table(path)
    for name in ("kind", "id"):
        if not pa.types.is_string(table.schema.field(name).type):
            raise UnreadableEmbeddings(f"column {name}: type {table.schema.field(name).type}, expected string")
    embedding = table.column("embedding").combine_chunks()
    if not (pa.types.is_list(embedding.type) and pa.types.is_floating(embedding.type.value_type)):
        raise UnreadableEmbeddings(f"column embedding: type {embedding.type}, expected a list of floats")
    if embedding.null_count:
        raise UnreadableEmbeddings(f"column embedding: {embedding.null_count} null row(s)")
    lengths = pc.list_value_length(embedding).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise UnreadableEmbeddings(f"column embedding: rows of different lengths ({lengths.min()}..{lengths.max()})")
    dim = int(lengths[0]) if len(lengths) else 0
    vectors = pc.list_flatten(embedding).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    kinds = table.column("kind").to_numpy(zero_copy_only=False)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    unknown = set(kinds.tolist()) - {"root", "text", "image"}
    if unknown:
        raise UnreadableEmbeddings(f"column kind: unknown value(s) {sorted(map(str, unknown))[:3]}")
    roots = int((kinds == "root").sum())
    if roots != 1:
        raise UnreadableEmbeddings(f"{roots} rows of kind root; exactly one is required")
    arrays: dict[str, np.ndarray] = {}
    row_ids: dict[str, list[str]] = {}
    for kind in ("root", "text", "image"):
        mask = kinds == kind
        if mask.any():
            arrays[kind] = vectors[mask]
            row_ids[kind] = [str(i) for i in ids[mask]]
    arrays["root"] = arrays["root"][0]
    if "radius" in table.column_names and "text" in arrays:
        radius = table.column("radius").to_numpy(zero_copy_only=False)
        arrays["text_radii"] = np.asarray(radius[kinds == "text"], dtype=np.float64)
    return arrays, row_ids
