"""The KPA decision of `autoscaler.policy` over many models at once, on numpy arrays.

Row i of every array is one model. `decide_batch` performs, element by element, exactly the float
and integer operations of `policy.decide` (tests/autoscaler check equality on random inputs), so
the live loop can decide 10,000 models in a few milliseconds and the simulator can sweep fleets.
Encodings: no data = NaN window value, not panicking = NaN panic_since, no delay index = NO_INDEX.
`autoscaler.batch_windows` is the same for `autoscaler.aggregation`'s bucketed windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from autoscaler.policy import UNKNOWN_SCALE, Activity, PolicyConfig, PolicyState, ScaleResult

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

ACTIVATING: Final = 0
ACTIVE: Final = 1
INACTIVE: Final = 2
ACTIVITY_CODES: Final[dict[str, int]] = {"activating": ACTIVATING, "active": ACTIVE, "inactive": INACTIVE}
ACTIVITY_NAMES: Final[tuple[Activity, Activity, Activity]] = ("activating", "active", "inactive")
NO_INDEX: Final = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """PolicyConfig fields as columns."""

    target_value: FloatArray
    total_value: FloatArray
    panic_threshold: FloatArray
    stable_window_s: FloatArray
    max_scale_up_rate: FloatArray
    max_scale_down_rate: FloatArray
    tick_s: FloatArray
    delay_buckets: IntArray
    min_scale: IntArray
    max_scale: IntArray
    initial_scale: IntArray
    activation_scale: IntArray
    scale_to_zero_grace_s: FloatArray
    scale_to_zero_retention_s: FloatArray
    target_burst_capacity: FloatArray
    activation_timeout_s: FloatArray
    reachable: BoolArray

    @staticmethod
    def from_configs(configs: Sequence[PolicyConfig]) -> BatchConfig:
        columns = {
            name: np.array([getattr(c, name) for c in configs], dtype=_dtype(kind))
            for name, kind in _CONFIG_COLUMNS.items()
        }
        return BatchConfig(**columns)

    def set(self, i: int, config: PolicyConfig) -> None:
        """Change one row in place (a model's spec changed)."""
        for name in _CONFIG_COLUMNS:
            getattr(self, name)[i] = getattr(config, name)


def _dtype(kind: str) -> type[np.generic]:
    return {"float": np.float64, "int": np.int64, "bool": np.bool_}[kind]


# Each column of BatchConfig is the PolicyConfig attribute (field or property) of the same name.
_CONFIG_COLUMNS: Final[dict[str, str]] = {
    "target_value": "float",
    "total_value": "float",
    "panic_threshold": "float",
    "stable_window_s": "float",
    "max_scale_up_rate": "float",
    "max_scale_down_rate": "float",
    "tick_s": "float",
    "delay_buckets": "int",
    "min_scale": "int",
    "max_scale": "int",
    "initial_scale": "int",
    "activation_scale": "int",
    "scale_to_zero_grace_s": "float",
    "scale_to_zero_retention_s": "float",
    "target_burst_capacity": "float",
    "activation_timeout_s": "float",
    "reachable": "bool",
}


class BatchState:
    """PolicyState fields as columns; `decide_batch` updates it in place."""

    def __init__(self, n: int, delay_width: int) -> None:
        self.activity = np.full(n, ACTIVATING, dtype=np.int64)
        self.activity_since = np.zeros(n, dtype=np.float64)
        self.initialized = np.zeros(n, dtype=np.bool_)
        self.panic_since = np.full(n, np.nan, dtype=np.float64)
        self.max_panic_pods = np.zeros(n, dtype=np.int64)
        self.delay_ring = np.zeros((n, max(1, delay_width)), dtype=np.int64)
        self.delay_last_index = np.full(n, NO_INDEX, dtype=np.int64)
        self.desired = np.zeros(n, dtype=np.int64)

    def grown(self, capacity: int, delay_width: int) -> BatchState:
        """A copy with room for `capacity` rows and delay windows of `delay_width` buckets."""
        n, width = len(self.desired), self.delay_ring.shape[1]
        out = BatchState(max(capacity, n), max(delay_width, width))
        out.activity[:n], out.activity_since[:n] = self.activity, self.activity_since
        out.initialized[:n], out.panic_since[:n] = self.initialized, self.panic_since
        out.max_panic_pods[:n], out.desired[:n] = self.max_panic_pods, self.desired
        out.delay_ring[:n, :width], out.delay_last_index[:n] = self.delay_ring, self.delay_last_index
        return out

    @staticmethod
    def from_states(states: Sequence[PolicyState], config: BatchConfig) -> BatchState:
        width = int(config.delay_buckets.max()) if len(states) else 1
        batch = BatchState(len(states), width)
        for i, state in enumerate(states):
            batch.set(i, state)
        return batch

    def set(self, i: int, state: PolicyState) -> None:
        self.activity[i] = ACTIVITY_CODES[state.activity]
        self.activity_since[i] = state.activity_since
        self.initialized[i] = state.initialized
        self.panic_since[i] = np.nan if state.panic_since is None else state.panic_since
        self.max_panic_pods[i] = state.max_panic_pods
        self.delay_ring[i, :] = 0
        self.delay_ring[i, : len(state.delay_ring)] = state.delay_ring
        self.delay_last_index[i] = NO_INDEX if state.delay_last_index is None else state.delay_last_index
        self.desired[i] = state.desired

    def get(self, i: int, delay_buckets: int) -> PolicyState:
        last = int(self.delay_last_index[i])
        panic_since = float(self.panic_since[i])
        return PolicyState(
            activity=ACTIVITY_NAMES[int(self.activity[i])],
            activity_since=float(self.activity_since[i]),
            initialized=bool(self.initialized[i]),
            panic_since=None if np.isnan(panic_since) else panic_since,
            max_panic_pods=int(self.max_panic_pods[i]),
            delay_ring=tuple(int(v) for v in self.delay_ring[i, :delay_buckets]) if last != NO_INDEX else (),
            delay_last_index=None if last == NO_INDEX else last,
            desired=int(self.desired[i]),
        )


@dataclass(frozen=True, slots=True)
class BatchResult:
    desired: IntArray  # UNKNOWN_SCALE where not valid
    excess_burst_capacity: IntArray
    panic: BoolArray
    valid: BoolArray

    def row(self, i: int) -> ScaleResult:
        return ScaleResult(
            int(self.desired[i]), int(self.excess_burst_capacity[i]), bool(self.panic[i]), bool(self.valid[i])
        )


def decide_batch(
    config: BatchConfig,
    state: BatchState,
    stable: FloatArray,
    panic: FloatArray,
    ready: IntArray,
    poked: BoolArray,
    now: float,
) -> BatchResult:
    """`policy.decide` for every row; NaN stable/panic = no data. Updates `state` in place."""
    c, s = config, state
    has_data = ~(np.isnan(stable) | np.isnan(panic))
    stable0 = np.where(has_data, stable, 0.0)
    panic0 = np.where(has_data, panic, 0.0)

    raw = _decider(c, s, stable0, panic0, ready, has_data, now)
    raw = np.where(has_data, raw, UNKNOWN_SCALE)
    bump = poked & (ready == 0)
    raw = np.where(bump, np.maximum(raw, np.maximum(c.activation_scale, 1)), raw)
    proceed = (raw != UNKNOWN_SCALE) | (s.activity == ACTIVATING)

    out, applied = _scaler(c, s, raw, ready, proceed, now)
    valid = proceed & ~((raw == UNKNOWN_SCALE) & ~applied)
    s.desired = np.where(valid, out, s.desired)

    tbc = c.target_burst_capacity
    ebc = np.floor(ready * c.total_value - tbc - panic0)
    ebc = np.where(tbc == 0, 0.0, np.where(tbc < 0, -1.0, ebc))
    return BatchResult(
        desired=np.where(valid, out, UNKNOWN_SCALE).astype(np.int64),
        excess_burst_capacity=np.where(valid, ebc, 0.0).astype(np.int64),
        panic=~np.isnan(s.panic_since),
        valid=valid,
    )


def _decider(
    c: BatchConfig,
    s: BatchState,
    stable: FloatArray,
    panic: FloatArray,
    ready: IntArray,
    rows: BoolArray,
    now: float,
) -> IntArray:
    ready_count = np.maximum(1, ready).astype(np.float64)
    max_up = np.ceil(c.max_scale_up_rate * ready_count)
    max_down = np.where(c.reachable, np.floor(ready_count / c.max_scale_down_rate), 0.0)
    dspc = np.ceil(stable / c.target_value)
    dppc = np.ceil(panic / c.target_value)
    d_stable = np.minimum(np.maximum(dspc, max_down), max_up).astype(np.int64)
    d_panic = np.minimum(np.maximum(dppc, max_down), max_up).astype(np.int64)
    act = c.activation_scale
    d_stable = np.where((act > 1) & (dspc > 0) & (act > d_stable), act, d_stable)
    d_panic = np.where((act > 1) & (dppc > 0) & (act > d_panic), act, d_panic)

    over = dppc / ready_count >= c.panic_threshold
    panic_since = np.where(over, now, s.panic_since)
    leave = ~over & ~np.isnan(panic_since) & (panic_since + c.stable_window_s < now)
    panic_since = np.where(leave, np.nan, panic_since)
    max_panic = np.where(leave, 0, s.max_panic_pods)
    panicking = ~np.isnan(panic_since)
    max_panic = np.where(panicking, np.maximum(max_panic, np.maximum(d_stable, d_panic)), max_panic)
    desired = np.where(panicking, max_panic, d_stable)
    s.panic_since = np.where(rows, panic_since, s.panic_since)
    s.max_panic_pods = np.where(rows, max_panic, s.max_panic_pods)

    delayed = rows & c.reachable & (c.delay_buckets > 0)
    if delayed.any():
        desired = _record_delay(c, s, np.flatnonzero(delayed), desired, now)
    return desired


def _record_delay(c: BatchConfig, s: BatchState, idx: IntArray, desired: IntArray, now: float) -> IntArray:
    """policy._record_delay for the rows in idx: a max over the last `size` delay buckets."""
    size = c.delay_buckets[idx]
    index = np.floor_divide(now, c.tick_s[idx]).astype(np.int64)
    last = s.delay_last_index[idx]
    ring = s.delay_ring[idx]
    reset = (last == NO_INDEX) | (index - last >= size)
    index = np.where(~reset & (index < last), last, index)  # a clock that stepped back
    steps = np.where(reset, 0, index - last)
    slot = np.arange(ring.shape[1], dtype=np.int64)[None, :]
    in_ring = slot < size[:, None]
    # Slots of the indices last+1 .. index are stale: (slot - last - 1) mod size < steps.
    stale = in_ring & (np.mod(slot - last[:, None] - 1, np.maximum(size, 1)[:, None]) < steps[:, None])
    ring = np.where(reset[:, None] | stale, 0, ring)
    rows = np.arange(len(idx))
    target = np.mod(index, size)
    ring[rows, target] = np.maximum(ring[rows, target], desired[idx])
    s.delay_ring[idx] = ring
    s.delay_last_index[idx] = index
    out = desired.copy()
    out[idx] = np.where(in_ring, ring, 0).max(axis=1)
    return out


def _scaler(
    c: BatchConfig, s: BatchState, raw: IntArray, ready: IntArray, rows: BoolArray, now: float
) -> tuple[IntArray, BoolArray]:
    base_min = np.where(c.reachable, c.min_scale, 0)
    min_scale = np.where(~s.initialized & c.reachable, np.maximum(base_min, c.initial_scale), base_min)
    # As policy.apply_bounds: the minimum wins over the maximum when they cross.
    capped = np.where((c.max_scale != 0) & (raw > c.max_scale), c.max_scale, raw)
    desired = np.where(raw < min_scale, min_scale, capped)

    since = now - s.activity_since
    zero = desired == 0
    retention = np.where(c.reachable, c.scale_to_zero_retention_s, 0.0)
    wait_activating = zero & (s.activity == ACTIVATING) & (since < c.activation_timeout_s)
    idle_over = zero & (s.activity == ACTIVE) & (since >= c.stable_window_s)
    keep_one = zero & (s.activity == ACTIVE) & (since < c.stable_window_s)
    in_grace = zero & (s.activity == INACTIVE) & (since < np.maximum(c.scale_to_zero_grace_s, retention))
    want = np.where(wait_activating, UNKNOWN_SCALE, np.where(keep_one, 1, desired))
    applied = ~(wait_activating | idle_over | in_grace)

    min_ready = np.where(s.initialized, np.maximum(base_min, 1), np.maximum(base_min, c.initial_scale))
    initialized = s.initialized | (ready >= min_ready)
    moves = (want > 0) | (s.activity != INACTIVE)
    activity = np.where(
        (want == 0) | (min_ready == 0),
        INACTIVE,
        np.where(moves, np.where(ready < min_ready, ACTIVATING, ACTIVE), s.activity),
    )
    activity = np.where(rows, activity, s.activity)
    s.activity_since = np.where(activity != s.activity, now, s.activity_since)
    s.activity = activity
    s.initialized = np.where(rows, initialized, s.initialized)
    return np.where(applied, want, s.desired), applied
