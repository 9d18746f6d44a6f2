"""User models written against the plugin interface, served by tests as `plugin_models:ClassName`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.server.model import Arrays, Model, TensorSpec


class Echo(Model):
    """Declares no inputs, so any tensors are accepted and returned as ``<name>_out``."""

    async def predict(self, inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        await asyncio.sleep(0)
        return {f"{name}_out": array for name, array in inputs.items()}


class Scale(Model):
    """Two declared inputs; a sync load that reads a factor from --model-dir when given."""

    inputs = (TensorSpec("x", "FP64", (-1,)), TensorSpec("label", "BYTES", (-1,)))
    outputs = (TensorSpec("y", "FP64", (-1,)), TensorSpec("greeting", "BYTES", (-1,)))

    def load(self) -> None:
        factor_file = self.model_dir / "factor.txt" if self.model_dir else None
        self.factor = float(factor_file.read_text()) if factor_file and factor_file.exists() else 2.0

    def predict(self, inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        greeting = np.array([b"hello " + label for label in inputs["label"]], dtype=object)
        return {"y": inputs["x"] * self.factor, "greeting": greeting}


class BrokenLoad(Model):
    def load(self) -> None:
        raise RuntimeError("weights are corrupt")


class SlowSyncLoad(Model):
    def load(self) -> None:
        time.sleep(60)


class BrokenPredict(Model):
    inputs = (TensorSpec("x", "INT32", (1,)),)

    def predict(self, inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        raise ValueError("model bug")


class NotAModel:
    pass


class OddOutputs(Model):
    """Returns a plain list for one output and a complex array for another."""

    def predict(self, inputs: Arrays) -> Any:
        if "complex" in inputs:
            return {"c": np.array([1 + 2j])}
        if "notamap" in inputs:
            return [1, 2]
        return {"y": [1.5, 2.5]}
