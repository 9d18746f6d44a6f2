"""Open Inference (v2) tensors: datatypes, shape checks, JSON and binary-extension codecs.

Inputs arrive either as JSON ``data`` (flat row-major, nested lists also accepted) or, with
Triton's binary tensor extension, as raw little-endian bytes after the JSON header
(``parameters.binary_data_size``). Either way the model sees a numpy array of the declared shape.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.server.datatypes import INT_DATATYPES, TensorSpec, family
from runtime.server.errors import BadRequest

__all__ = ["DTYPES", "TensorSpec", "coerce", "decode_binary", "decode_json", "encode_output", "parse_input"]

# Open Inference datatype -> numpy dtype (little-endian, as the binary extension requires).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

_INTS = INT_DATATYPES


def coerce(spec: TensorSpec, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The array in the declared dtype (after ``spec.check``): a model gets what it declares.
    Integers are range-checked first, since a cast would wrap silently."""
    dtype = DTYPES[spec.datatype]
    if array.dtype == dtype:
        return array
    if family(spec.datatype) == "int" and array.size:
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise BadRequest(f"input {spec.name}: value out of range for {spec.datatype}")
    return array.astype(dtype)


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _parse_shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise BadRequest(f"{where}: shape must be a list of integers")
    if any(d < 0 for d in raw):
        raise BadRequest(f"{where}: shape {raw} has a negative dimension")
    return tuple(raw)


def decode_json(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> npt.NDArray[Any]:
    """JSON ``data`` -> array of ``datatype`` and ``shape``, rejecting values that do not fit the type."""
    flat = list(_flatten(data))
    count = int(np.prod(shape, dtype=np.int64))
    if len(flat) != count:
        raise BadRequest(f"input {name}: {len(flat)} values given, shape {list(shape)} needs {count}")
    dtype = DTYPES[datatype]
    if datatype == "BYTES":
        if not all(isinstance(v, str | bytes) for v in flat):
            raise BadRequest(f"input {name}: BYTES data must be strings")
        out = np.empty(count, dtype=object)
        out[:] = [v.encode() if isinstance(v, str) else v for v in flat]
        return out.reshape(shape)
    if count == 0:
        return np.empty(shape, dtype=dtype)
    # numpy would quietly cast 1.5 to an INT8 1 or True to 1.0; the protocol says the data must be
    # of the declared type, so check the Python kinds first.
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in flat)
    elif datatype in _INTS:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
    else:
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat)
    if not ok:
        raise BadRequest(f"input {name}: data is not all {datatype}")
    if datatype in _INTS:
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise BadRequest(f"input {name}: value out of range for {datatype}")
    return np.asarray(flat, dtype=dtype).reshape(shape)


def decode_binary(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> npt.NDArray[Any]:
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequest(f"input {name}: truncated BYTES element")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            items.append(raw[offset : offset + length])
            offset += length
        if len(items) != count or offset != len(raw):
            raise BadRequest(f"input {name}: {len(items)} BYTES elements given, shape needs {count}")
        out = np.empty(count, dtype=object)
        out[:] = items
        return out.reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input {name}: {len(raw)} bytes given, {datatype} {list(shape)} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def parse_input(tensor: Any, binary: memoryview | None, offset: int) -> tuple[npt.NDArray[Any], int]:
    """One entry of a v2 request's ``inputs``; returns the array and the new binary offset."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest("each input must be an object with a name")
    name = tensor["name"]
    datatype = tensor.get("datatype")
    if datatype not in DTYPES:
        raise BadRequest(f"input {name}: unknown datatype {datatype!r}")
    shape = _parse_shape(tensor.get("shape"), f"input {name}")
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if binary is None or not isinstance(size, int) or offset + size > len(binary):
            raise BadRequest(f"input {name}: binary_data_size {size} exceeds the binary body")
        return decode_binary(name, datatype, shape, bytes(binary[offset : offset + size])), offset + size
    if "data" not in tensor:
        raise BadRequest(f"input {name}: no data")
    return decode_json(name, datatype, shape, tensor["data"]), offset


def datatype_of(array: npt.NDArray[Any]) -> str:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype == array.dtype.newbyteorder("<") and name != "BYTES":
            return name
    raise ValueError(f"numpy dtype {array.dtype} has no Open Inference datatype")


def _bytes_items(array: npt.NDArray[Any]) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]


def encode_output(name: str, array: npt.NDArray[Any], binary: bool) -> tuple[dict[str, Any], bytes]:
    """An output as a v2 JSON object, plus its raw bytes when the client asked for binary data."""
    datatype = datatype_of(array)
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if binary:
        if datatype == "BYTES":
            raw = b"".join(struct.pack("<I", len(b)) + b for b in _bytes_items(array))
        else:
            raw = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        return out, raw
    if datatype == "BYTES":
        out["data"] = [b.decode("utf-8", errors="replace") for b in _bytes_items(array)]
    else:
        out["data"] = array.reshape(-1).tolist()
    return out, b""
