"""Controllers: the autoscaler's own aggregation and policy code, driven from the engine's clock.

`PolicyController` feeds each active model's per-second load into `autoscaler.aggregation` exactly as
the activator's reporter does (one sample a second, a partial one on a poke) and calls
`autoscaler.policy.decide` or `autoscaler.histogram.decide`. `BatchController` (sim/batch_control.py)
does the same for many KPA models at once with `autoscaler.batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from autoscaler import histogram, policy
from autoscaler.aggregation import Aggregator, StatSample
from autoscaler.config import policy_config_from_spec
from autoscaler.histogram import HistogramConfig, HistogramState
from autoscaler.policy import Observation, PolicyConfig, PolicyState
from zeroserve.spec import ModelService, ScalingSpec

if TYPE_CHECKING:
    from sim.engine import Engine

ACTIVATOR_ID = "sim"
PERIOD_FLOOR_S = 1e-6  # activator/stats.py's floor on a report's period


def policy_config(scaling: ScalingSpec) -> PolicyConfig:
    """The KPA configuration a ScalingSpec means: the live loop's own translation."""
    return policy_config_from_spec(scaling)


@dataclass
class _Cursor:
    """How far a model's load has been reported: time and cumulative totals at that time."""

    at_s: float
    integral: float
    requests: float


class PolicyController:
    """One scalar decision per model per tick, with the live code path's aggregation."""

    def __init__(self, services: list[ModelService],
                 histogram_config: HistogramConfig | None = None) -> None:
        self.services = services
        self.aggregator = Aggregator()
        self.kpa: list[PolicyConfig] = []
        self.hist: list[HistogramConfig | None] = []
        self.state: list[PolicyState | HistogramState] = []
        self.cursor: list[_Cursor | None] = []
        self.last_desired: list[int] = []
        for svc in services:
            config = policy_config(svc.scaling)
            self.aggregator.configure(svc.name, config.stable_window_s, config.panic_window_s)
            self.kpa.append(config)
            if svc.scaling.policy == "histogram":
                base = histogram_config or HistogramConfig()
                self.hist.append(HistogramConfig(
                    kpa=config, bin_s=base.bin_s, range_s=base.range_s,
                    prewarm_percentile=base.prewarm_percentile,
                    keepalive_percentile=base.keepalive_percentile, margin=base.margin,
                    min_samples=base.min_samples, min_cv=base.min_cv,
                    max_out_of_bounds_fraction=base.max_out_of_bounds_fraction))
                self.state.append(HistogramState())
            else:
                self.hist.append(None)
                self.state.append(PolicyState())
            self.cursor.append(None)
            self.last_desired.append(0)

    # --- the activator's reporter --------------------------------------------------------------

    def _report_seconds(self, engine: Engine, i: int) -> None:
        """Samples for every report the engine snapshotted since this model's last one."""
        upto = engine.second  # the newest report in the engine's ring
        time_of = engine.report_time
        cursor = self.cursor[i]
        # Reports older than the ring are at rest (zero load) and older than any window we keep.
        first = upto - engine.ring_s + 2
        if cursor is None:
            cursor = _Cursor(time_of(upto), float(engine.ring_integral[upto % engine.ring_s, i]),
                             float(engine.ring_requests[upto % engine.ring_s, i]))
        elif cursor.at_s < time_of(first - 1):
            row = (first - 1) % engine.ring_s
            cursor = _Cursor(time_of(first - 1), float(engine.ring_integral[row, i]),
                             float(engine.ring_requests[row, i]))
        start = engine.report_index(cursor.at_s) + 1  # the first report after the cursor
        name = self.services[i].name
        samples = []
        for s in range(start, upto + 1):
            row = s % engine.ring_s
            integral = float(engine.ring_integral[row, i])
            requests = float(engine.ring_requests[row, i])
            at = time_of(s)
            period = at - cursor.at_s
            samples.append(StatSample(name, ACTIVATOR_ID, at, (integral - cursor.integral) / period,
                                      requests - cursor.requests, period))
            cursor = _Cursor(at, integral, requests)
        self.aggregator.ingest(samples)
        self.cursor[i] = cursor

    def _report_partial(self, engine: Engine, i: int, now: float) -> None:
        """On a poke the reporter sends the load since its last report at once (activator/stats.py)."""
        integral, requests = engine.cumulative(i, now)
        cursor = self.cursor[i]
        if cursor is None:
            # The reporter learns of a model at its first request, so its first period starts at
            # that arrival and is (nearly) empty: it reports the in-flight count as the average.
            cursor = _Cursor(now, integral, requests - 1.0)
        else:
            self._report_seconds(engine, i)
            cursor = self.cursor[i]
            assert cursor is not None
        period = now - cursor.at_s
        if period > 0:
            average = (integral - cursor.integral) / period
        else:
            average, period = float(engine.models[i].inflight), PERIOD_FLOOR_S
        self.aggregator.ingest([StatSample(self.services[i].name, ACTIVATOR_ID, now, average,
                                           requests - cursor.requests, period)])
        self.cursor[i] = _Cursor(now, integral, requests)

    # --- decisions -----------------------------------------------------------------------------

    def _decide(self, engine: Engine, i: int, now: float, poked: bool) -> int:
        m = engine.models[i]
        observed = self.aggregator.observe(self.services[i].name, self.kpa[i].metric, now)
        stable, panic = observed if observed is not None else (None, None)
        # As autoscaler/loop.py: `poked` only on the decision a poke triggers, not on ticks.
        obs = Observation(stable, panic, len(m.ready), poked=poked)
        hist = self.hist[i]
        state = self.state[i]
        if hist is not None:
            assert isinstance(state, HistogramState)
            result, self.state[i] = histogram.decide(hist, state, obs, now)
        else:
            assert isinstance(state, PolicyState)
            result, self.state[i] = policy.decide(self.kpa[i], state, obs, now)
        desired = result.desired if result.valid else m.replicas
        self.last_desired[i] = desired
        return desired

    def tick(self, engine: Engine, models: npt.NDArray[np.int64], now: float) -> npt.NDArray[np.int64]:
        out = np.zeros(models.size, dtype=np.int64)
        for k, i in enumerate(models.tolist()):
            self._report_seconds(engine, i)
            out[k] = self._decide(engine, i, now, poked=False)
        return out

    def poke(self, engine: Engine, model: int, now: float) -> int:
        self._report_partial(engine, model, now)
        return self._decide(engine, model, now, poked=True)

    def wake_at(self, model: int, now: float) -> float | None:
        if self.last_desired[model] != 0:
            return None
        state = self.state[model]
        if isinstance(state, HistogramState):
            hist = self.hist[model]
            assert hist is not None
            if histogram.windows(hist, state) is not None:
                if state.busy:
                    return None
                wake = histogram.next_decision_at(hist, state, now)
                return math.inf if wake is None else wake
            state = state.kpa
        # KPA at zero and inactive decides zero until the next request (which pokes).
        return math.inf if state.activity == "inactive" else None
