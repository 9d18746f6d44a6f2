"""The discrete-event engine: a virtual clock (heapq), load snapshots and the autoscaler's ticks.

The engine plays the activator and the backend (their queues and replicas are sim/fleet.py); the
decisions come from a Controller (sim/control.py) that runs the autoscaler's own policy and
aggregation code. Arrivals are walked with a cursor over the workload's arrays instead of living on
the heap. Load is accounted the way the activator reports it: the time-weighted integral of in-flight
requests (queued + proxied), snapshotted at each of the activator's reports into a ring so a
controller can read per-report samples or window sums for many models at once. When the reports and
the ticks fall is `state.LoopTiming` (default: reports at whole seconds, ticks on even seconds).

Idle models cost nothing: the per-second snapshot and the autoscaler tick are scheduled only while
some model is "active" (has traffic, replicas or a pending scale-down), and a model leaves the active
set once it is at zero with nothing in flight and its controller has no pending decision.
"""

from __future__ import annotations

import heapq
import logging
import math
from typing import Protocol

import numpy as np
import numpy.typing as npt

from sim.fleet import DONE, READY, SECOND, TICK, TIMEOUT, WAKE, Fleet
from sim.state import WHOLE_SECONDS, LoopTiming, ModelRun, ModelSetup, RunResult
from sim.workloads import Workload

log = logging.getLogger(__name__)



class Controller(Protocol):
    """The autoscaler seen from the engine (implementations in sim/control.py)."""

    def tick(self, engine: Engine, models: npt.NDArray[np.int64], now: float) -> npt.NDArray[np.int64]:
        """Desired replicas for each of `models` (the active ones, ascending) at a periodic tick."""
        ...

    def poke(self, engine: Engine, model: int, now: float) -> int:
        """Desired replicas right now, for a request that found the model cold."""
        ...

    def wake_at(self, model: int, now: float) -> float | None:
        """For a model at rest: None if it still needs ticks, else when it next does (inf: never)."""
        ...


class Engine(Fleet):
    def __init__(self, workload: Workload, setups: list[ModelSetup], controller: Controller, *,
                 seed: int = 0, tick_s: float | None = None, tick_lateness_s: float = 0.005,
                 timing: LoopTiming = WHOLE_SECONDS) -> None:
        super().__init__(workload, setups, seed)
        self.controller = controller
        self.tick_rng = np.random.default_rng([seed, 1])  # its own stream: cold starts stay comparable
        # One loop ticks every model, as autoscaler/loop.py does; its period comes from the first spec.
        self.tick_s = tick_s if tick_s is not None else setups[0].service.scaling.tick_s
        # The live loop sleeps to a 2 s grid but reads its clock when it wakes, a little late. That
        # matters: with a grace period a multiple of the tick, "since < grace" is a coin toss live,
        # and an exact simulated clock would always win it (one tick early, every scale to zero).
        self.tick_lateness_s = tick_lateness_s
        # Where the grid lies: the live loop anchors it where it started (next_at += tick), not at
        # the trace's zero. Where the activator's reports fall: report k at report_time(k), in the
        # bucket of its second (state.LoopTiming).
        self.tick_phase_s = timing.tick_phase_s % self.tick_s
        period, phase = timing.report_period_s, timing.report_phase_s
        if not 1.0 <= period < 2.0 or not 0.0 <= phase < period:
            raise ValueError(f"reports need a period in [1, 2) s and a phase within it, got {timing}")
        self.report_phase_s = phase
        self.report_period_s = period
        self._tick_grid = 0.0
        # Ring of cumulative load at each report: row (k % ring_s) holds every model's totals at report k.
        longest = max(s.service.scaling.stable_window_s for s in setups)
        self.ring_s = math.ceil(longest) + 4
        count = len(setups)
        self.ring_integral = np.zeros((self.ring_s, count))
        self.ring_requests = np.zeros((self.ring_s, count))
        # Mirrors of ModelRun's accounting, so that a snapshot is one vector expression.
        self._integral = np.zeros(count)
        self._inflight = np.zeros(count)
        self._last = np.zeros(count)
        self._requests = np.zeros(count)
        self.active_mask = np.zeros(count, dtype=np.bool_)
        self.second = -1  # the newest report in the ring
        self.now = 0.0
        self._n_active = 0
        self._second_scheduled = False
        self._tick_scheduled = False

    # --- the clock ---------------------------------------------------------------------------

    def _activate(self, m: ModelRun) -> None:
        if not m.active:
            m.active = True
            self.active_mask[m.index] = True
            self._n_active += 1
        if not self._second_scheduled:
            self._second_scheduled = True
            # Back-fill the ring over the quiet stretch, so window sums across it read as no load.
            last = self.report_index(self.now)  # the last report due by now
            self._snapshot(last)
            self._push(self.report_time(last + 1), SECOND, None)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            phase = self.tick_phase_s
            self._tick_grid = math.floor((self.now - phase) / self.tick_s + 1.0) * self.tick_s + phase
            self._push_tick()

    def _push_tick(self) -> None:
        late = self.tick_lateness_s * float(self.tick_rng.random()) if self.tick_lateness_s > 0 else 0.0
        self._push(self._tick_grid + late, TICK, None)

    def _poke(self, m: ModelRun, t: float) -> int:
        return self.controller.poke(self, m.index, t)

    def report_time(self, k: int) -> float:
        """When the activator takes report k."""
        return self.report_phase_s + k * self.report_period_s

    def report_index(self, t: float) -> int:
        """The last report taken at or before t."""
        k = math.floor((t - self.report_phase_s) / self.report_period_s)
        if self.report_time(k) > t:  # the division rounded up
            k -= 1
        elif self.report_time(k + 1) <= t:
            k += 1
        return k

    def _snapshot(self, upto_s: int) -> None:
        """Ring rows for reports (self.second, upto_s] with the cumulative totals at report upto_s."""
        # Copy the per-model totals that changed since the last snapshot into the mirror arrays here
        # rather than at every event: a busy model changes many times a second.
        integral, inflight, last, requests = self._integral, self._inflight, self._last, self._requests
        for m in self._dirty:
            i = m.index
            integral[i] = m.integral
            inflight[i] = m.inflight
            last[i] = m.last_s
            requests[i] = m.requests
            m.dirty = False
        self._dirty.clear()
        first = max(self.second + 1, upto_s - self.ring_s + 1)
        if first <= upto_s:
            totals = self._integral + self._inflight * (self.report_time(upto_s) - self._last)
            for s in range(first, upto_s + 1):
                row = s % self.ring_s
                self.ring_integral[row] = totals
                self.ring_requests[row] = self._requests
            self.second = upto_s

    def run(self, until_s: float | None = None) -> RunResult:
        """Run to `until_s`, or until the last arrival has been served and every model is at rest
        (bounded: an hour of virtual time after the last arrival)."""
        arrivals = self._arrival
        owners = self._owner
        n = len(arrivals)
        cursor = 0
        last = arrivals[-1] if n else 0.0
        end = until_s if until_s is not None else last + 3600.0
        heap = self._heap
        pop = heapq.heappop
        models = self.models
        next_arrival = arrivals[0] if n else math.inf
        events = 0
        while True:
            if heap and heap[0][0] <= next_arrival:
                if heap[0][0] > end:
                    break
                t, kind, _, obj, req = pop(heap)
                self.now = t
                events += 1
                if kind == DONE:
                    self._complete(obj, req, t)
                elif kind == SECOND:
                    self._on_second(t)
                elif kind == TICK:
                    self._on_tick(t)
                elif kind == READY:
                    self._on_ready(obj, t)
                elif kind == TIMEOUT:
                    self._on_timeout(req, t)
                else:
                    self._activate(models[req])
            elif next_arrival <= end:
                self.now = next_arrival
                events += 1
                self._arrive(cursor, models[owners[cursor]], next_arrival)
                cursor += 1
                next_arrival = arrivals[cursor] if cursor < n else math.inf
            else:
                break
        self.events += events
        if until_s is not None:
            self.now = until_s
        return self._result()

    def _on_second(self, t: float) -> None:
        s = round((t - self.report_phase_s) / self.report_period_s)
        self._snapshot(s)
        if self._n_active:
            self._push(self.report_time(s + 1), SECOND, None)
        else:
            self._second_scheduled = False

    def _on_tick(self, t: float) -> None:
        active = np.flatnonzero(self.active_mask)
        if not active.size:
            self._tick_scheduled = False
            return
        self.ticks += int(active.size)
        desired = self.controller.tick(self, active, t)
        changed = desired != self.replica_count[active]
        if changed.any():
            for i, want in zip(active[changed].tolist(), desired[changed].tolist(), strict=True):
                self._scale(self.models[i], want, t)
        # Candidates to rest: nothing asked for, nothing in flight (the draining check is per model).
        # After the scaling above every active model has replica_count == desired.
        idle = (desired == 0) & (self._inflight[active] == 0)
        for i in active[idle].tolist():
            m = self.models[i]
            if m.draining or m.inflight:  # the mirror can lag the model by events at this instant
                continue
            wake = self.controller.wake_at(i, t)
            if wake is not None:
                m.active = False
                self.active_mask[i] = False
                self._n_active -= 1
                if wake < math.inf:
                    self._push(max(wake, t), WAKE, None, i)
        if self._n_active:
            self._tick_grid += self.tick_s
            self._push_tick()
        else:
            self._tick_scheduled = False
