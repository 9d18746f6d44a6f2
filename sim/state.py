"""The simulator's data: per-model setup, replicas and per-model run state, and a run's raw result."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sim.models import ColdStartModel, ServiceTimeModel
from zeroserve.spec import ModelService

# Request states.
PENDING, QUEUED, SERVED, TIMED_OUT, REJECTED = range(5)


@dataclass(frozen=True)
class ModelSetup:
    """Everything the engine needs about one model: its spec and what its replicas cost."""

    service: ModelService
    cold_start: ColdStartModel
    service_time: ServiceTimeModel


@dataclass(frozen=True)
class LoopTiming:
    """Where the live system's timers fall on the workload's clock; a live system has some value of
    each, and knife-edge decisions depend on them (docs/sim.md, "Fidelity").

    The autoscaler's loop ticks at tick_phase_s + k * tick_s (plus a small random lateness): it adds
    tick_s to its start, so the grid never drifts. The activator's reporter keeps its own grid, from
    where it started: report k is taken at report_phase_s + k * report_period_s and lands in the
    bucket of that second (a period other than 1 s models a reporter that drifts).
    """

    tick_phase_s: float = 0.0
    report_phase_s: float = 0.0
    report_period_s: float = 1.0

    @property
    def whole_seconds(self) -> bool:
        """Reports exactly at whole seconds (what the batch controller's windows assume)."""
        return self.report_phase_s == 0.0 and self.report_period_s == 1.0


WHOLE_SECONDS = LoopTiming()  # ticks on even seconds, reports at whole seconds


class Replica:
    __slots__ = ("created_s", "draining", "inflight", "model", "ready", "ready_s")

    def __init__(self, model: int, created_s: float, ready_s: float) -> None:
        self.model = model
        self.created_s = created_s
        self.ready_s = ready_s
        self.ready = False
        self.draining = False
        self.inflight = 0


class ModelRun:
    """Mutable per-model state during a run."""

    __slots__ = ("active", "cc", "cold_starts", "dirty", "draining", "from_zero", "gpus", "index", "inflight",
                 "integral", "last_s", "max_queued", "queue", "queued", "ready", "replica_s", "requests",
                 "setup", "starting", "timeout_s")

    def __init__(self, index: int, setup: ModelSetup) -> None:
        self.index = index
        self.setup = setup
        self.cc = setup.service.scaling.container_concurrency
        self.max_queued = setup.service.queue.max_queued
        self.timeout_s = setup.service.queue.timeout_s
        self.gpus = max(1, setup.service.runtime.gpus)
        self.starting: list[Replica] = []
        self.ready: list[Replica] = []
        self.draining: list[Replica] = []
        self.queue: deque[int] = deque()  # may hold timed-out entries, skipped when reached
        self.queued = 0
        self.active = False
        self.dirty = False  # in the engine's list of models to copy into its arrays
        # Activator-side load accounting (what activator/stats.py reports).
        self.inflight = 0
        self.integral = 0.0
        self.requests = 0
        self.last_s = 0.0
        self.cold_starts = 0
        self.from_zero = 0
        self.replica_s = 0.0

    @property
    def replicas(self) -> int:
        """Replicas the backend has been asked for (starting + ready), as `ready_replicas` + pending."""
        return len(self.starting) + len(self.ready)


@dataclass(frozen=True)
class RunResult:
    """Raw outcome of a run; sim/report.py turns it into the summary."""

    models: tuple[str, ...]
    arrival_s: npt.NDArray[np.float64]
    start_s: npt.NDArray[np.float64]  # dispatch to a replica; nan if never served
    service_s: npt.NDArray[np.float64]
    state: npt.NDArray[np.int8]
    cold: npt.NDArray[np.bool_]  # waited for a replica that was not ready when it arrived
    replica_s: npt.NDArray[np.float64]  # per model
    gpu_s: npt.NDArray[np.float64]
    cold_starts: npt.NDArray[np.int64]  # replica starts per model
    from_zero: npt.NDArray[np.int64]  # starts while the model had no replica at all
    timeline_s: npt.NDArray[np.float64]  # when the total replica count changed
    timeline_replicas: npt.NDArray[np.int64]
    end_s: float
    events: int
    ticks: int  # model decisions at periodic ticks (not pokes)
    pokes: int
