"""Safetensors checkpoints: shard headers parsed and checked by hand, the shard files, their identity.

A shard is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the raw bytes. torch is imported inside functions: the core install never pays for it.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_HEADER_LIMIT = 100 << 20  # safetensors' own cap on the JSON header


# safetensors dtype name -> (torch dtype attribute, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}


class LoaderError(Exception):
    """A shard is malformed or does not fit the model it is loaded into."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str                 # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    offset_bytes: int          # absolute offset in the file
    nbytes: int


@dataclass(frozen=True, slots=True)
class Shard:
    path: Path
    size_bytes: int
    entries: tuple[TensorEntry, ...]   # sorted by offset
    metadata: Mapping[str, str]


def read_header(path: Path) -> Shard:
    """Parse a safetensors file's header and check every entry lies inside the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise LoaderError(f"{path}: shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _HEADER_LIMIT or 8 + header_len > size:
            raise LoaderError(f"{path}: header length {header_len} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LoaderError(f"{path}: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise LoaderError(f"{path}: header is not a JSON object")
    base = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    entries = [_entry(path, name, spec, base, size) for name, spec in header.items()]
    entries.sort(key=lambda e: e.offset_bytes)
    for a, b in itertools.pairwise(entries):
        if a.offset_bytes + a.nbytes > b.offset_bytes:
            raise LoaderError(f"{path}: tensors {a.name} and {b.name} overlap")
    return Shard(path, size, tuple(entries), metadata)


def _entry(path: Path, name: str, spec: Any, base: int, size: int) -> TensorEntry:
    if not isinstance(spec, dict) or spec.get("dtype") not in _DTYPES:
        raise LoaderError(f"{path}: tensor {name}: unknown or missing dtype")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise LoaderError(f"{path}: tensor {name}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise LoaderError(f"{path}: tensor {name}: bad data_offsets {offsets!r}")
    start, end = offsets
    count = 1
    for d in shape:
        count *= d
    nbytes = count * _DTYPES[spec["dtype"]][1]
    if not 0 <= start <= end or end - start != nbytes or base + end > size:
        raise LoaderError(f"{path}: tensor {name}: offsets {offsets} do not hold {shape} {spec['dtype']}")
    return TensorEntry(name, spec["dtype"], tuple(shape), base + start, nbytes)


def shard_files(model_dir: Path) -> list[Path]:
    """The checkpoint's shards: those the index names, else every *.safetensors file."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LoaderError(f"{model_dir}: no *.safetensors files")
    return files


def checkpoint_identity(model_dir: Path) -> str:
    """Which files these are, not where they sit: the backend hands each replica its own directory of
    hard links (or symlinks) into the node cache, so two directories holding the same cache entry
    give the same identity, and a new version (a new cache entry) a different one."""
    files = [*shard_files(model_dir), model_dir / "config.json"]
    parts = []
    for f in files:
        st = f.stat()   # follows symlinks
        parts.append(f"{f.name}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, _DTYPES[name][0])
    return dtype


def checkpoint_dtype(shards: Sequence[Shard]) -> torch.dtype:
    """The floating dtype holding most bytes: what the skeleton's parameters are declared as."""
    by_dtype: dict[str, int] = {}
    for shard in shards:
        for e in shard.entries:
            if e.dtype.startswith(("F", "BF")):
                by_dtype[e.dtype] = by_dtype.get(e.dtype, 0) + e.nbytes
    return torch_dtype(max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else "F32")

