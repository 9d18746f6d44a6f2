"""The autoscaler's last decision per model row, as arrays: read by status, metrics and the writer.

Rows are the batch's rows (a model keeps its row while it exists); every array has the same
capacity, and a freed row is reset to the values of a row never used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from autoscaler.metrics import DecisionRow
from autoscaler.policy import ScaleResult


class DecisionTable:
    """Per-row record of the last decision, for status(), metrics and the single-writer check."""

    def __init__(self, n: int) -> None:
        self.told = np.full(n, -1, dtype=np.int64)  # replicas last sent to backend.scale; -1 never
        self.desired = np.full(n, -1, dtype=np.int64)  # last valid decision
        self.ready = np.zeros(n, dtype=np.int64)
        self.stable = np.full(n, np.nan)
        self.panic_value = np.full(n, np.nan)
        self.ebc = np.zeros(n, dtype=np.int64)
        self.panic = np.zeros(n, dtype=np.bool_)
        self.valid = np.zeros(n, dtype=np.bool_)
        self.decided_at = np.full(n, np.nan)

    def grow(self, capacity: int) -> None:
        """Room for `capacity` rows, in place: whoever holds this table keeps seeing the same one."""
        fresh = DecisionTable(capacity)
        for name, array in vars(self).items():
            getattr(fresh, name)[: len(array)] = array
        vars(self).update(vars(fresh))

    def clear(self, row: int) -> None:
        fresh = DecisionTable(1)
        for name, array in vars(self).items():
            array[row] = getattr(fresh, name)[0]

    def record(
        self, row: int, result: ScaleResult, ready: int, stable: float | None, panic: float | None, now: float
    ) -> None:
        """One model's decision (a poke)."""
        self.ready[row] = ready
        self.stable[row] = np.nan if stable is None else stable
        self.panic_value[row] = np.nan if panic is None else panic
        self.valid[row] = result.valid
        self.panic[row] = result.panic
        self.decided_at[row] = now
        if result.valid:
            self.desired[row] = result.desired
            self.ebc[row] = result.excess_burst_capacity

    def record_batch(
        self,
        occupied: NDArray[np.bool_],
        ready: NDArray[np.int64],
        stable: NDArray[np.float64],
        panic: NDArray[np.float64],
        result: tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.bool_]],
        now: float,
    ) -> None:
        """A tick's decisions for the first len(occupied) rows; result is (desired, valid, ebc, panic)."""
        n = len(occupied)
        desired, valid, ebc, in_panic = result
        self.ready[:n], self.stable[:n], self.panic_value[:n] = ready, stable, panic
        self.valid[:n] = valid
        self.decided_at[:n] = np.where(occupied, now, np.nan)
        self.desired[:n] = np.where(valid, desired, self.desired[:n])
        self.ebc[:n] = np.where(valid, ebc, self.ebc[:n])
        self.panic[:n] = in_panic & occupied

    def status(self, r: int, metric: str, policy: str) -> dict[str, Any]:
        return {
            "desired": int(self.desired[r]),
            "ready": int(self.ready[r]),
            "panic": bool(self.panic[r]),
            "valid": bool(self.valid[r]),
            "sent": int(self.told[r]),
            "metric": metric,
            "stable": _finite(self.stable[r]),
            "panic_value": _finite(self.panic_value[r]),
            "excess_burst_capacity": int(self.ebc[r]),
            "policy": policy,
            "decided_at": _finite(self.decided_at[r]),
        }

    def decision_row(self, model: str, r: int) -> DecisionRow:
        return DecisionRow(
            model=model,
            desired=max(0, int(self.desired[r])),
            ready=int(self.ready[r]),
            panic=bool(self.panic[r]),
            stable_value=float(np.nan_to_num(self.stable[r])),
            panic_value=float(np.nan_to_num(self.panic_value[r])),
            excess_burst_capacity=int(self.ebc[r]),
        )


def _finite(value: np.floating[Any] | float) -> float | None:
    v = float(value)
    return None if np.isnan(v) else v
