"""The activator's queues and the backend's replicas: what happens to requests and replicas.

`Fleet` holds the per-model and per-request state and handles arrivals, dispatch, completions, queue
timeouts and the replica lifecycle; `sim.engine.Engine` adds the clock, the load snapshots and the
autoscaler's ticks on top of it, and decides when `_activate` and the controller's poke happen.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import numpy as np

from sim.state import PENDING, QUEUED, REJECTED, SERVED, TIMED_OUT, ModelRun, ModelSetup, Replica, RunResult
from sim.workloads import Workload

# Event kinds, also their order among events at the same instant: the load snapshot of second s sees
# everything before s; the tick at s sees that snapshot and the replicas that became ready at s.
SECOND, READY, DONE, TIMEOUT, WAKE, TICK = range(6)


class Fleet:
    """Requests and replicas of every model, on an event heap the engine runs."""

    now: float

    def __init__(self, workload: Workload, setups: list[ModelSetup], seed: int) -> None:
        if len(setups) != len(workload.models):
            raise ValueError(f"{len(workload.models)} models in the workload, {len(setups)} setups")
        self.workload = workload
        self.rng = np.random.default_rng(seed)
        self.models = [ModelRun(i, s) for i, s in enumerate(setups)]
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
        count = len(setups)
        # Per-model counts a batch controller reads for all active models at once.
        self.ready_count = np.zeros(count, dtype=np.int64)
        self.replica_count = np.zeros(count, dtype=np.int64)  # starting + ready (what was asked for)
        # Events: (time, kind, sequence, object, request); the sequence keeps equal times in push order.
        self._heap: list[tuple[float, int, int, Any, int]] = []
        self._seq = itertools.count(1)
        self._dirty: list[ModelRun] = []  # models whose load accounting changed since the last snapshot
        self._replicas = 0
        self._timeline_s: list[float] = [0.0]
        self._timeline_n: list[int] = [0]
        self.events = 0
        self.ticks = 0
        self.pokes = 0

    def _push(self, t: float, kind: int, obj: Any, req: int = 0) -> None:
        heapq.heappush(self._heap, (t, kind, next(self._seq), obj, req))

    def _activate(self, m: ModelRun) -> None:
        raise NotImplementedError  # the engine's: start the clock's work for a model with traffic

    def _poke(self, m: ModelRun, t: float) -> int:
        raise NotImplementedError  # the engine's: the autoscaler's decision for a cold arrival

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

    # --- requests ----------------------------------------------------------------------------

    def _arrive(self, req: int, m: ModelRun, t: float) -> None:
        replica = self._pick(m) if not m.queued else None
        if replica is None and m.queued >= m.max_queued:
            self._state[req] = REJECTED
            return
        if not m.active:
            self._activate(m)  # first: it back-fills the load ring with the totals before this arrival
        # _load(m, t, 1, 1), inlined: this is the busiest path.
        m.integral += m.inflight * (t - m.last_s)
        m.last_s = t
        m.inflight += 1
        m.requests += 1
        if not m.dirty:
            m.dirty = True
            self._dirty.append(m)
        if replica is not None:
            self._start(req, replica, t)
            return
        self._state[req] = QUEUED
        m.queue.append(req)
        m.queued += 1
        self._push(t + m.timeout_s, TIMEOUT, None, req)
        if not m.ready:
            # Like activator/queue.py: every arrival at a model with no ready replica pokes (the
            # autoscaler decides again each time); one that waits for a busy replica does not.
            self.pokes += 1
            self._scale(m, self._poke(m, t), t)

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
        heapq.heappush(self._heap, (t + self._service[req], DONE, next(self._seq), replica, req))

    def _complete(self, replica: Replica, req: int, t: float) -> None:
        m = self.models[replica.model]
        # _load(m, t, -1, 0), inlined.
        m.integral += m.inflight * (t - m.last_s)
        m.last_s = t
        m.inflight -= 1
        if not m.dirty:
            m.dirty = True
            self._dirty.append(m)
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
                self._push(t + seconds, READY, replica)
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
