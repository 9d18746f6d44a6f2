"""KPA for many models at once: `autoscaler.batch.decide_batch` over the active rows at each tick.

The windows are the engine's per-second load ring turned into Knative buckets for every model in one
vector step, with the same reading as `autoscaler.aggregation.BucketWindow` under the reporter's
pattern (a sample every second, a partial one on a poke that shares its second's bucket): the average
is the window's bucket total over min(buckets since the model's first sample, window). A poke decides
one row with the scalar `policy.decide` on that row's state, so both paths share one state table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from autoscaler import policy
from autoscaler.aggregation import PRECISION_DIGITS, window_buckets
from autoscaler.batch import INACTIVE, BatchConfig, BatchState, decide_batch
from autoscaler.policy import Observation
from sim.control import policy_config
from zeroserve.spec import ModelService

if TYPE_CHECKING:
    from sim.engine import Engine

_NEVER = np.iinfo(np.int64).max
_CONFIG_FIELDS = tuple(BatchConfig.__dataclass_fields__)
_STATE_FIELDS = ("activity", "activity_since", "initialized", "panic_since", "max_panic_pods", "delay_ring",
                 "delay_last_index", "desired")
_DELAY_FIELDS = ("delay_ring", "delay_last_index")
_SCALE = 10.0**PRECISION_DIGITS


def _round(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # The same float operations as aggregation.round_average.
    return np.floor(values * _SCALE + 0.5) / _SCALE


def _round_one(value: float) -> float:
    return math.floor(value * _SCALE + 0.5) / _SCALE


class BatchController:
    def __init__(self, services: list[ModelService]) -> None:
        self.configs = [policy_config(s.scaling) for s in services]
        first = self.configs[0]
        if any((c.stable_window_s, c.panic_window_s, c.metric) !=
               (first.stable_window_s, first.panic_window_s, first.metric) for c in self.configs):
            raise ValueError("the batch controller needs one stable/panic window and metric for all models")
        self.rps = first.metric == "rps"
        self.config = BatchConfig.from_configs(self.configs)
        self.state = BatchState.from_states([policy.PolicyState()] * len(services), self.config)
        n = len(services)
        self.size = window_buckets(first.stable_window_s)
        self.panic_size = window_buckets(first.panic_window_s)
        self.buckets = np.zeros((self.size, n))  # row s % size: bucket values of second s
        self.filled_s = -1  # buckets written up to this second
        self.stable_total = np.zeros(n)
        self.panic_total = np.zeros(n)
        self.first_s = np.full(n, _NEVER, dtype=np.int64)
        self.pending: dict[int, tuple[float, float, float]] = {}  # model -> poke (t, integral, requests)
        # The aggregator's per-activator memory of its newest sample (ModelWindows._by_activator):
        # after a second is filled every model has one sample there, the bucket's value; a poke in
        # that second adds one. Only the poked models are kept: model -> (samples, their mean).
        self.sample_extra: dict[int, tuple[int, float]] = {}
        self.last_desired = np.zeros(n, dtype=np.int64)
        # States decided by pokes since the last tick, written into the columns at the next tick
        # (a model is often poked several times in a row; the round trip through the columns is exact).
        self.poked_state: dict[int, policy.PolicyState] = {}
        # One configuration for every model (the usual fleet): a slice of any k rows equals the first
        # k rows, so a tick takes views instead of gathering 17 columns.
        self.uniform = len(set(self.configs)) == 1
        self._config_by_size: dict[int, BatchConfig] = {}
        self._config_rows: npt.NDArray[np.int64] | None = None
        self._config_slice = self.config
        self._no_pokes: dict[int, npt.NDArray[np.bool_]] = {}
        # decide_batch touches the delay ring only for rows with a scale-down delay.
        delays = int(self.config.delay_buckets.max()) > 0
        self._state_fields = tuple(f for f in _STATE_FIELDS if delays or f not in _DELAY_FIELDS)

    def _fill(self, engine: Engine, upto: int) -> None:
        """Bucket values for seconds (filled_s, upto] of every model, from the engine's ring; the
        window totals are kept running so a tick reads them without summing the buckets."""
        start = max(self.filled_s + 1, upto - self.size + 1)
        ring_load = engine.ring_requests if self.rps else engine.ring_integral
        ring = engine.ring_s
        for s in range(start, upto + 1):
            values = ring_load[s % ring] - ring_load[(s - 1) % ring]
            for i, (at, integral, requests) in list(self.pending.items()):
                if at < s:
                    # The first sample after a poke covers only the rest of that second: its
                    # average over that part, or (rps) its request count, which is summed per bucket.
                    if self.rps:
                        values[i] = ring_load[s % ring, i] - requests
                    else:
                        values[i] = (ring_load[s % ring, i] - integral) / (s - at)
                    del self.pending[i]
            self._write(s, values)
        if start <= upto:
            self.sample_extra.clear()
        self.filled_s = max(self.filled_s, upto)

    def _write(self, s: int, values: npt.NDArray[np.float64]) -> None:
        row = s % self.size
        self.stable_total += values - self.buckets[row]
        # The panic window is the newest panic_size buckets: the one leaving it is panic_size back.
        self.panic_total += values - self.buckets[(s - self.panic_size) % self.size]
        self.buckets[row] = values

    def _set_bucket(self, s: int, model: int, value: float) -> None:
        old = self.buckets[s % self.size, model]
        self.buckets[s % self.size, model] = value
        self.stable_total[model] += value - old
        self.panic_total[model] += value - old

    def _windows(self, rows: npt.NDArray[np.int64], now_s: int
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        since = np.maximum(now_s - self.first_s[rows] + 1, 1)
        stable = self.stable_total[rows] / np.minimum(since, self.size)
        panic = self.panic_total[rows] / np.minimum(since, self.panic_size)
        return _round(stable), _round(panic)

    def _config_for(self, rows: npt.NDArray[np.int64]) -> BatchConfig:
        if self.uniform:
            k = int(rows.size)
            config = self._config_by_size.get(k)
            if config is None:
                config = BatchConfig(**{f: getattr(self.config, f)[:k] for f in _CONFIG_FIELDS})
                self._config_by_size[k] = config
            return config
        # Consecutive ticks often see the same active set: reuse its slice of the configuration.
        if self._config_rows is None or not np.array_equal(self._config_rows, rows):
            self._config_rows = rows.copy()
            self._config_slice = BatchConfig(**{k: getattr(self.config, k)[rows] for k in _CONFIG_FIELDS})
        return self._config_slice

    def _flush_pokes(self) -> None:
        for model, state in self.poked_state.items():
            self.state.set(model, state)
        self.poked_state.clear()

    def tick(self, engine: Engine, models: npt.NDArray[np.int64], now: float) -> npt.NDArray[np.int64]:
        now_s = engine.second
        self._fill(engine, now_s)
        if self.poked_state:
            self._flush_pokes()
        rows = models
        stable, panic = self._windows(rows, now_s)
        ready = engine.ready_count[rows]
        k = int(rows.size)
        poked = self._no_pokes.get(k)  # pokes are decided on their own, as in the loop
        if poked is None:
            poked = self._no_pokes[k] = np.zeros(k, dtype=np.bool_)  # decide_batch only reads it
        columns = self.state
        state = BatchState.__new__(BatchState)  # the active rows' columns, without allocating n rows
        for name in self._state_fields:
            setattr(state, name, getattr(columns, name)[rows])
        result = decide_batch(self._config_for(rows), state, stable, panic, ready, poked, now)
        for name in self._state_fields:
            getattr(columns, name)[rows] = getattr(state, name)
        desired = np.where(result.valid, result.desired, engine.replica_count[rows])
        self.last_desired[rows] = desired
        return desired

    def poke(self, engine: Engine, model: int, now: float) -> int:
        now_s = engine.second
        if self.filled_s < now_s:
            self._fill(engine, now_s)
        integral, requests = engine.cumulative(model, now)
        inflight = float(engine.models[model].inflight)
        if self.first_s[model] == _NEVER:
            # As PolicyController: the first report is the arrival itself (an empty period, one
            # request).
            value = 1.0 if self.rps else inflight
            self._set_bucket(now_s, model, value)
            self.sample_extra[model] = (1, value)
        elif self.rps:
            # Requests are counted, and one activator's counts in one bucket add up
            # (aggregation.ModelWindows.record): the poke adds the requests since the last report.
            base = self.pending.get(model)
            base_requests = base[2] if base is not None else float(
                engine.ring_requests[now_s % engine.ring_s, model])
            old = float(self.buckets[now_s % self.size, model])
            self._set_bucket(now_s, model, old + (requests - base_requests))
        else:
            # The reporter's period starts at its last report: this second's start, or an earlier poke.
            pending = self.pending.get(model)
            if pending is None:
                ring = now_s % engine.ring_s
                pending = (float(now_s), float(engine.ring_integral[ring, model]),
                           float(engine.ring_requests[ring, model]))
            since, base_integral, _ = pending
            period = now - since
            value = (integral - base_integral) / period if period > 0 else inflight
            # The reporter already sent a sample for this second: aggregation.ModelWindows averages
            # all of one activator's samples that land in one bucket.
            old = float(self.buckets[now_s % self.size, model])
            count, mean = self.sample_extra.get(model, (1, old))
            new_mean = (mean * count + value) / (count + 1)
            self._set_bucket(now_s, model, old + new_mean - mean)
            self.sample_extra[model] = (count + 1, new_mean)
        self.pending[model] = (now, integral, requests)
        if self.first_s[model] == _NEVER:
            self.first_s[model] = now_s
        # One row: the same arithmetic as _windows, in plain floats (a poke is on the hot path).
        since = max(now_s - int(self.first_s[model]) + 1, 1)
        stable = _round_one(float(self.stable_total[model]) / min(since, self.size))
        panic = _round_one(float(self.panic_total[model]) / min(since, self.panic_size))
        m = engine.models[model]
        config = self.configs[model]
        state = self.poked_state.get(model)
        if state is None:
            state = self.state.get(model, config.delay_buckets)
        obs = Observation(stable, panic, len(m.ready), poked=True)
        result, state = policy.decide(config, state, obs, now)
        self.poked_state[model] = state
        desired = result.desired if result.valid else m.replicas
        self.last_desired[model] = desired
        return desired

    def wake_at(self, model: int, now: float) -> float | None:
        poked = self.poked_state.get(model)
        if poked is not None:
            inactive = poked.activity == "inactive"
        else:
            inactive = bool(self.state.activity[model] == INACTIVE)
        at_rest = self.last_desired[model] == 0 and inactive
        return math.inf if at_rest else None
