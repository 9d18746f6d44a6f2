"""The discrete-event engine: a virtual clock (heapq), the activator's queue, replicas, and ticks.

The engine plays the activator and the backend; the decisions come from a Controller (sim/control.py)
that runs the autoscaler's own policy and aggregation code. Arrivals are walked with a cursor over the
workload's arrays instead of living on the heap. Load is accounted the way the activator reports it:
the time-weighted integral of in-flight requests (queued + proxied), snapshotted at each whole second
into a ring so a controller can read per-second samples or window sums for many models at once.

Idle models cost nothing: the per-second snapshot and the autoscaler tick are scheduled only while
some model is "active" (has traffic, replicas or a pending scale-down), and a model leaves the active
set once it is at zero with nothing in flight and its controller has no pending decision.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from sim.state import (
    PENDING,
    QUEUED,
    REJECTED,
    SERVED,
    TIMED_OUT,
    WHOLE_SECONDS,
    LoopTiming,
    ModelRun,
    ModelSetup,
    Replica,
    RunResult,
)
from sim.workloads import Workload

log = logging.getLogger(__name__)

# Event kinds, also their order among events at the same instant: the load snapshot of second s sees
# everything before s; the tick at s sees that snapshot and the replicas that became ready at s.
_SECOND, _READY, _DONE, _TIMEOUT, _WAKE, _TICK = range(6)


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


class Engine:
    def __init__(self, workload: Workload, setups: list[ModelSetup], controller: Controller, *,
                 seed: int = 0, tick_s: float | None = None, tick_lateness_s: float = 0.005,
                 timing: LoopTiming = WHOLE_SECONDS) -> None:
        if len(setups) != len(workload.models):
            raise ValueError(f"{len(workload.models)} models in the workload, {len(setups)} setups")
        self.workload = workload
        self.controller = controller
        self.rng = np.random.default_rng(seed)
        self.tick_rng = np.random.default_rng([seed, 1])  # its own stream: cold starts stay comparable
        self.models = [ModelRun(i, s) for i, s in enumerate(setups)]
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
        self.report_phase_s = timing.report_phase_s
        self.report_period_s = timing.report_period_s
        self._tick_grid = 0.0
        n = workload.requests
        self.service_s = np.zeros(n, dtype=np.float64)
        for i, s in enumerate(setups):
            mask = workload.model_index == i
            self.service_s[mask] = s.service_time.service_s(workload.context_tokens[mask],
                                                             workload.generated_tokens[mask])
        # Per-request columns the event loop reads and writes as Python lists (numpy element access
        # costs several times more per event); RunResult gets them back as arrays.
        self._arrival: list[float] = workload.arrival_s.tolist()
        self._owner: list[int] = workload.model_index.tolist()
        self._service: list[float] = self.service_s.tolist()
        self._start_s: list[float] = [math.nan] * n
        self._state: list[int] = [PENDING] * n
        self._cold: list[bool] = [False] * n
        # Ring of cumulative load at whole seconds: row (s % ring_s) holds every model's totals at s.
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
        # Per-model counts a batch controller reads for all active models at once.
        self.ready_count = np.zeros(count, dtype=np.int64)
        self.replica_count = np.zeros(count, dtype=np.int64)  # starting + ready (what was asked for)
        self.active_mask = np.zeros(count, dtype=np.bool_)
        self.second = -1  # the last whole second in the ring
        self.now = 0.0
        # Events: (time, kind, sequence, object, request); the sequence keeps equal times in push order.
        self._heap: list[tuple[float, int, int, Any, int]] = []
        self._seq = itertools.count(1)
        self._n_active = 0
        self._dirty: list[ModelRun] = []  # models whose accounting changed since the last snapshot
        self._second_scheduled = False
        self._tick_scheduled = False
        self._replicas = 0
        self._timeline_s: list[float] = [0.0]
        self._timeline_n: list[int] = [0]
        self.events = 0
        self.ticks = 0
        self.pokes = 0

    # --- the clock ---------------------------------------------------------------------------

    def _push(self, t: float, kind: int, obj: Any, req: int = 0) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), obj, req))

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
            self._push(self.report_time(last + 1), _SECOND, None)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            phase = self.tick_phase_s
            self._tick_grid = math.floor((self.now - phase) / self.tick_s + 1.0) * self.tick_s + phase
            self._push_tick()

    def _push_tick(self) -> None:
        late = self.tick_lateness_s * float(self.tick_rng.random()) if self.tick_lateness_s > 0 else 0.0
        self._push(self._tick_grid + late, _TICK, None)

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

    def _load(self, m: ModelRun, t: float, d_inflight: int, d_requests: int) -> None:
        """The activator's in-flight count changes (arrival, dispatch timeout, completion)."""
        m.integral += m.inflight * (t - m.last_s)
        m.last_s = t
        m.inflight += d_inflight
        m.requests += d_requests
        if not m.dirty:
            m.dirty = True
            self._dirty.append(m)

    def cumulative(self, model: int, t: float) -> tuple[float, float]:
        """Load integral and request count of one model up to time t (t >= its last change)."""
        m = self.models[model]
        return m.integral + m.inflight * (t - m.last_s), float(m.requests)

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
                if kind == _DONE:
                    self._complete(obj, req, t)
                elif kind == _SECOND:
                    self._on_second(t)
                elif kind == _TICK:
                    self._on_tick(t)
                elif kind == _READY:
                    self._on_ready(obj, t)
                elif kind == _TIMEOUT:
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
            self._push(self.report_time(s + 1), _SECOND, None)
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
                    self._push(max(wake, t), _WAKE, None, i)
        if self._n_active:
            self._tick_grid += self.tick_s
            self._push_tick()
        else:
            self._tick_scheduled = False

    # --- requests ----------------------------------------------------------------------------

    def _arrive(self, req: int, m: ModelRun, t: float) -> None:
        replica = self._pick(m) if not m.queued else None
        if replica is None and m.queued >= m.max_queued:
            self._state[req] = REJECTED
            return
        if not m.active:
            self._activate(m)  # first: it back-fills the load ring with the totals before this arrival
        self._load(m, t, 1, 1)
        if replica is not None:
            self._start(req, replica, t)
            return
        self._state[req] = QUEUED
        m.queue.append(req)
        m.queued += 1
        self._push(t + m.timeout_s, _TIMEOUT, None, req)
        if not m.ready:
            # Like activator/queue.py: every arrival at a model with no ready replica pokes (the
            # autoscaler decides again each time); one that waits for a busy replica does not.
            self.pokes += 1
            self._scale(m, self.controller.poke(self, m.index, t), t)

    @staticmethod
    def _pick(m: ModelRun) -> Replica | None:
        """The ready replica with the fewest requests and a free slot (the first such on ties)."""
        best: Replica | None = None
        cc = m.cc
        for r in m.ready:
            if cc and r.inflight >= cc:
                continue
            if best is None or r.inflight < best.inflight:
                best = r
        return best

    def _start(self, req: int, replica: Replica, t: float) -> None:
        self._state[req] = SERVED
        self._start_s[req] = t
        if replica.ready_s > self._arrival[req]:
            self._cold[req] = True
        replica.inflight += 1
        heapq.heappush(self._heap, (t + self._service[req], _DONE, next(self._seq), replica, req))

    def _complete(self, replica: Replica, req: int, t: float) -> None:
        m = self.models[replica.model]
        self._load(m, t, -1, 0)
        replica.inflight -= 1
        if replica.draining:
            if replica.inflight == 0:
                m.draining.remove(replica)
                self._retire(m, replica, t)
            return
        if m.queued:
            self._drain_queue(m, replica, t)

    def _drain_queue(self, m: ModelRun, replica: Replica, t: float) -> None:
        queue = m.queue
        state = self._state
        while m.queued and (not m.cc or replica.inflight < m.cc):
            req = queue.popleft()
            if state[req] == QUEUED:
                m.queued -= 1
                self._start(req, replica, t)

    def _on_timeout(self, req: int, t: float) -> None:
        if self._state[req] != QUEUED:
            return
        self._state[req] = TIMED_OUT
        m = self.models[self._owner[req]]
        m.queued -= 1
        self._load(m, t, -1, 0)

    # --- replicas ----------------------------------------------------------------------------

    def _scale(self, m: ModelRun, desired: int, t: float) -> None:
        have = m.replicas
        if desired > have:
            if have == 0 and not m.draining:
                m.from_zero += 1
            for _ in range(desired - have):
                seconds, _hit = m.setup.cold_start.sample_s(self.rng)
                replica = Replica(m.index, t, t + seconds)
                m.starting.append(replica)
                m.cold_starts += 1
                self._push(t + seconds, _READY, replica)
            self.replica_count[m.index] = desired
            self._count(desired - have, t)
        elif desired < have:
            for _ in range(have - desired):
                # As the local backend (and a ReplicaSet): replicas not ready yet go first, then
                # the newest ready one, busy or not (it then drains what it has).
                self.replica_count[m.index] -= 1
                if m.starting:
                    self._retire(m, m.starting.pop(), t)
                    continue
                victim = m.ready[0]
                for r in m.ready:
                    if r.created_s >= victim.created_s:
                        victim = r
                m.ready.remove(victim)
                self.ready_count[m.index] -= 1
                if victim.inflight:
                    # It stops taking requests and finishes those it has (graceful termination).
                    victim.draining = True
                    m.draining.append(victim)
                else:
                    self._retire(m, victim, t)

    def _count(self, delta: int, t: float) -> None:
        self._replicas += delta
        self._timeline_s.append(t)
        self._timeline_n.append(self._replicas)

    def _retire(self, m: ModelRun, replica: Replica, t: float) -> None:
        m.replica_s += t - replica.created_s
        replica.ready = False
        self._count(-1, t)

    def _on_ready(self, replica: Replica, t: float) -> None:
        m = self.models[replica.model]
        if replica not in m.starting:
            return  # cancelled by a scale-down while it was starting
        m.starting.remove(replica)
        replica.ready = True
        m.ready.append(replica)
        self.ready_count[m.index] += 1
        self._drain_queue(m, replica, t)

    # --- the end -----------------------------------------------------------------------------

    def _result(self) -> RunResult:
        end = self.now
        replica_s = np.zeros(len(self.models))
        for i, m in enumerate(self.models):
            replica_s[i] = m.replica_s + sum(end - r.created_s for r in m.starting + m.ready + m.draining)
        gpus = np.array([m.gpus for m in self.models], dtype=np.float64)
        return RunResult(
            models=self.workload.models,
            arrival_s=self.workload.arrival_s,
            start_s=np.array(self._start_s, dtype=np.float64),
            service_s=self.service_s,
            state=np.array(self._state, dtype=np.int8),
            cold=np.array(self._cold, dtype=np.bool_),
            replica_s=replica_s,
            gpu_s=replica_s * gpus,
            cold_starts=np.array([m.cold_starts for m in self.models], dtype=np.int64),
            from_zero=np.array([m.from_zero for m in self.models], dtype=np.int64),
            timeline_s=np.asarray(self._timeline_s),
            timeline_replicas=np.asarray(self._timeline_n, dtype=np.int64),
            end_s=end,
            events=self.events,
            ticks=self.ticks,
            pokes=self.pokes,
        )
