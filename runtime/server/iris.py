"""The `iris` example: a numpy logistic-regression classifier on the plugin interface."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.server.model import Arrays, Model, TensorSpec

log = logging.getLogger(__name__)

WEIGHTS_FILE = "iris.npz"
# In a source checkout the trained weights live in examples/iris; `--model-dir` overrides this.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "examples" / "iris"


class IrisModel(Model):
    inputs = (TensorSpec("input-0", "FP32", (-1, 4)),)
    outputs = (TensorSpec("output-0", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3)))
    platform = "numpy_logistic_regression"

    def load(self) -> None:
        path = (self.model_dir or DEFAULT_DIR) / WEIGHTS_FILE
        if not path.exists():
            # A replica given an empty artifact dir (a ModelService with no storageUri) still serves
            # the example: its weights ship with the source.
            log.info(
                "no %s in %s; using the shipped weights in %s", WEIGHTS_FILE, self.model_dir, DEFAULT_DIR
            )
            path = DEFAULT_DIR / WEIGHTS_FILE
        with np.load(path) as npz:
            self._mean: npt.NDArray[np.float32] = npz["mean"]
            self._scale: npt.NDArray[np.float32] = npz["scale"]
            self._weights: npt.NDArray[np.float32] = npz["weights"]
            self._bias: npt.NDArray[np.float32] = npz["bias"]
            self.classes: list[str] = [str(c) for c in npz["classes"]]

    def predict(self, inputs: Arrays) -> dict[str, npt.NDArray[Any]]:
        x = np.asarray(inputs["input-0"], dtype=np.float32)
        logits = ((x - self._mean) / self._scale) @ self._weights + self._bias
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        return {
            "output-0": np.argmax(logits, axis=1).astype(np.int64),
            "probabilities": probs.astype(np.float32),
        }
