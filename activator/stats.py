"""Load as the activator sees it, reported to the autoscaler once a second and on every poke.

Concurrency is the time-weighted average of in-flight requests (queued + proxied) over the
period, which is what Knative's queue-proxy reports; a per-second snapshot of a count would
miss short requests entirely.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from autoscaler.aggregation import StatSample

log = logging.getLogger(__name__)


class LoadSink(Protocol):
    def report(self, samples: list[StatSample]) -> None: ...

    def poke(self, model: str) -> None: ...


class ModelLoad:
    __slots__ = ("inflight", "integral", "last", "requests", "start")

    def __init__(self, now: float) -> None:
        self.inflight = 0
        self.integral = 0.0
        self.last = now
        self.start = now
        self.requests = 0

    def enter(self, now: float) -> None:
        self.integral += self.inflight * (now - self.last)
        self.last = now
        self.inflight += 1
        self.requests += 1

    def leave(self, now: float) -> None:
        self.integral += self.inflight * (now - self.last)
        self.last = now
        self.inflight -= 1

    def snapshot(self, now: float) -> tuple[float, int, float]:
        """(average concurrency, requests, period) since the last snapshot; starts a new period."""
        self.integral += self.inflight * (now - self.last)
        period = now - self.start
        avg = self.integral / period if period > 0 else float(self.inflight)
        requests = self.requests
        self.integral = 0.0
        self.requests = 0
        self.last = now
        self.start = now
        return avg, requests, period


class LoadTracker:
    def __init__(self, sink: LoadSink, activator_id: str, *,
                 clock: Callable[[], float] = time.monotonic,
                 stamp: Callable[[], float] | None = None) -> None:
        self.sink = sink
        self.activator_id = activator_id
        self.clock = clock
        # The timestamp put in samples; in one process the autoscaler shares our monotonic clock.
        self.stamp = stamp or clock
        self.models: dict[str, ModelLoad] = {}
        self.queued: dict[str, Callable[[], int]] = {}

    def get(self, model: str) -> ModelLoad:
        load = self.models.get(model)
        if load is None:
            load = self.models[model] = ModelLoad(self.clock())
        return load

    def samples(self, only: str | None = None) -> list[StatSample]:
        now = self.clock()
        at = self.stamp()
        out = []
        for model, load in self.models.items():
            if only is not None and model != only:
                continue
            avg, requests, period = load.snapshot(now)
            queued = self.queued[model]() if model in self.queued else 0
            out.append(StatSample(model=model, activator_id=self.activator_id, at=at,
                                  avg_concurrency=avg, requests=float(requests),
                                  period_s=max(period, 1e-6), queued=queued))
        return out

    def poke(self, model: str) -> None:
        # Report the model's load with the poke so the decision sees the arrival that caused it.
        try:
            self.sink.report(self.samples(only=model))
        except Exception:
            log.exception("load report on poke failed model=%s", model)
        self.sink.poke(model)

    async def run(self, period_s: float = 1.0) -> None:
        # On a fixed grid, as the autoscaler ticks: sleeping a period after each report would drift
        # by the wake-up lateness and now and then skip one of the autoscaler's 1-second buckets.
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += period_s
            behind = loop.time() - next_at
            if behind > 0:  # a stalled loop: skip the missed reports rather than send a burst
                next_at += math.ceil(behind / period_s) * period_s
            await asyncio.sleep(next_at - loop.time())
            try:
                self.sink.report(self.samples())
            except Exception:
                log.exception("load report failed")
