"""Open Inference datatypes and declared tensor specs, without numpy (so importing the plugin
interface stays cheap for models that never touch tensors)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runtime.server.errors import BadRequest

DATATYPES = (
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
INT_DATATYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})


def family(datatype: str) -> str:
    """Datatypes a model input accepts interchangeably: any float for a float input, any int for an int."""
    if datatype in FLOAT_DATATYPES:
        return "float"
    if datatype in INT_DATATYPES:
        return "int"
    return datatype


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One declared input or output of a model; -1 in ``shape`` is a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"datatype {self.datatype!r} is not an Open Inference datatype")

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def check(self, datatype: str, shape: Sequence[int]) -> None:
        if family(datatype) != family(self.datatype):
            raise BadRequest(f"input {self.name}: datatype {datatype} given, model expects {self.datatype}")
        if len(shape) != len(self.shape) or any(
            want != -1 and got != want for got, want in zip(shape, self.shape, strict=True)
        ):
            raise BadRequest(
                f"input {self.name}: shape {list(shape)} given, model expects {list(self.shape)}"
            )
