"""The autoscaler: a tick every `tick_s` over all models, an immediate decision on a poke, and the
single writer of replica counts.

All KPA models are decided together by `autoscaler.batch` (numpy); a poke decides one model with the
scalar `autoscaler.policy`, which the tests prove gives the same answers. Models whose spec names
another policy ("histogram") get a per-model policy object (`autoscaler.model_policy`).

Decided counts reach the backend only through the single writer (`autoscaler.writer`); the last
decision per model is kept in `autoscaler.decisions` for status and metrics. With no sample
from any activator for `stale_after_s`, the windows are treated as "no data": nothing scales down on
load figures nobody is refreshing; a poke still starts a model at zero.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry

from autoscaler import metrics
from autoscaler.aggregation import StatSample
from autoscaler.batch import BatchConfig, BatchState, decide_batch
from autoscaler.batch_windows import BatchWindows
from autoscaler.config import policy_config_from_spec
from autoscaler.decisions import DecisionTable
from autoscaler.metrics import DecisionRow
from autoscaler.model_policy import ModelPolicy, new_policy
from autoscaler.policy import Observation, PolicyConfig, ScaleResult, decide, initial_state
from autoscaler.writer import ScaleWriter

if TYPE_CHECKING:
    from autoscaler.backends.base import Backend
    from zeroserve.spec import ModelService

log = logging.getLogger(__name__)

STALE_AFTER_S = 10.0  # ten missed one-second reports from every activator
RESYNC_S = 30.0  # how often the backend's own targets are compared with ours


@dataclass
class _Model:
    name: str
    row: int
    svc: ModelService
    config: PolicyConfig
    policy: ModelPolicy | None  # None: KPA, decided in the batch


class Autoscaler:
    def __init__(
        self,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 2.0,
        registry: CollectorRegistry | None = None,
        stale_after_s: float = STALE_AFTER_S,
        resync_s: float = RESYNC_S,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.tick_s = tick_s
        self.stale_after_s = stale_after_s
        self.resync_s = resync_s
        self._models: dict[str, _Model] = {}
        self._row_of: dict[str, int] = {}
        self._free: list[int] = []
        self._configs: list[PolicyConfig] = []  # per row; free rows keep a harmless default
        self._names: list[str] = []  # per row; "" for a free row
        self._occupied = np.zeros(0, dtype=np.bool_)
        self._rows_used = 0
        self._batch_config = BatchConfig.from_configs([])
        self._use_rps = np.zeros(0, dtype=np.bool_)
        self._config_dirty = False
        self._dirty_rows: set[int] = set()
        self._state = BatchState(0, 1)
        self._windows = BatchWindows([], [])
        self._rows = DecisionTable(0)
        self._writer = ScaleWriter(backend, self._rows, self._row_of)
        self._last_report_at: float | None = None
        self._last_resync_at: float | None = None
        self._pokes: set[str] = set()
        self._poke_scheduled = False
        self._background: set[asyncio.Task[None]] = set()
        self._custom: list[_Model] = []
        self.last_tick_s: float | None = None
        metrics.attach(self, registry)

    # --- models -------------------------------------------------------------------------------

    def upsert(self, svc: ModelService) -> None:
        """Add a model or apply a changed spec; starts warming its artifacts on the backend."""
        config = policy_config_from_spec(svc.scaling)
        now = self.clock()
        model = self._models.get(svc.name)
        if model is None:
            row = self._allocate_row()
            ready = self.backend.ready_replicas(svc.name)
            self._windows.configure(row, config.stable_window_s, config.panic_window_s)
            self._state.set(row, initial_state(config, ready, now))
            model = _Model(svc.name, row, svc, config, new_policy(svc, config, ready, now))
            self._models[svc.name] = model
            self._row_of[svc.name] = row
            self._names[row] = svc.name
            self._occupied[row] = True
            self._prefetch(svc.name)
        else:
            row = model.row
            old, model.config = model.config, config
            if (old.stable_window_s, old.panic_window_s) != (config.stable_window_s, config.panic_window_s):
                self._windows.configure(row, config.stable_window_s, config.panic_window_s)
            if old.delay_buckets != config.delay_buckets:
                # A delay window of another length starts empty; the rest of the state carries on.
                state = self._state.get(row, old.delay_buckets)
                self._state.set(row, replace(state, delay_ring=(), delay_last_index=None))
            if old != config or model.svc.scaling.policy != svc.scaling.policy:
                ready = self.backend.ready_replicas(svc.name)
                model.policy = new_policy(svc, config, ready, now)
            if model.svc.storage_uri != svc.storage_uri:
                self._prefetch(svc.name)
            model.svc = svc
        self._configs[row] = config
        self._dirty_rows.add(row)
        self._config_dirty = True

    def remove(self, name: str) -> None:
        model = self._models.pop(name, None)
        if model is None:
            return
        del self._row_of[name]
        self._configs[model.row] = PolicyConfig()
        self._names[model.row] = ""
        self._occupied[model.row] = False
        self._rows.clear(model.row)
        self._free.append(model.row)
        self._pokes.discard(name)
        self._writer.forget(name)
        self._dirty_rows.add(model.row)
        self._config_dirty = True

    def _allocate_row(self) -> int:
        if self._free:
            return self._free.pop()
        row = self._rows_used
        self._rows_used += 1
        if row >= len(self._configs):
            # Every array has `capacity` rows; rows never used or freed hold a default config and
            # are decided along with the rest, their results masked out.
            capacity = max(16, 2 * len(self._configs))
            self._names.extend("" for _ in range(capacity - len(self._configs)))
            self._configs.extend(PolicyConfig() for _ in range(capacity - len(self._configs)))
            self._occupied = np.concatenate(
                [self._occupied, np.zeros(capacity - len(self._occupied), np.bool_)]
            )
            self._rows.grow(capacity)
            self._windows.grow(capacity)
            self._state = self._state.grown(capacity, self._state.delay_ring.shape[1])
        return row

    # --- load and pokes (the activator's LoadSink) --------------------------------------------

    def ingest(self, samples: Iterable[StatSample]) -> None:
        # Any report, even an empty one, shows an activator is alive and counting.
        self._last_report_at = self.clock()
        self._windows.ingest(list(samples), self._row_of)

    def report(self, samples: list[StatSample]) -> None:
        self.ingest(samples)

    def poke(self, model: str) -> None:
        """A request waits for `model`: decide it now, not at the next tick."""
        if model not in self._models:
            return
        self._pokes.add(model)
        loop = self._writer.loop
        if self._poke_scheduled or loop is None or loop.is_closed():
            return  # without a running loop the next tick sees the poke
        self._poke_scheduled = True
        # Next turn of the event loop, not the next tick: the decision runs right after the
        # activator's handler yields, and backend.scale one turn after that.
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        if in_loop:
            loop.call_soon(self._decide_pokes)
        else:
            loop.call_soon_threadsafe(self._decide_pokes)

    def _decide_pokes(self) -> None:
        self._poke_scheduled = False
        pokes, self._pokes = self._pokes, set()
        now = self.clock()
        for name in pokes:
            model = self._models.get(name)
            if model is not None:
                self._decide_one(model, now, poked=True)

    # --- decisions ----------------------------------------------------------------------------

    def _stale(self, now: float) -> bool:
        return self._last_report_at is None or now - self._last_report_at > self.stale_after_s

    def _decide_one(self, model: _Model, now: float, *, poked: bool) -> ScaleResult:
        if self._config_dirty:
            self._rebuild_config()
        row, config = model.row, model.config
        ready = self.backend.ready_replicas(model.name)
        rows = np.array([row], dtype=np.int64)
        stable, panic = self._windows.observe(np.array([config.metric == "rps"]), now, rows)
        if self._stale(now):
            obs = Observation(None, None, ready, poked)
        else:
            obs = Observation(float(stable[0]), float(panic[0]), ready, poked)
        if model.policy is None:
            state = self._state.get(row, config.delay_buckets)
            result, state = decide(config, state, obs, now)
            self._state.set(row, state)
        else:
            result = model.policy.decide(obs, now)
        self._rows.record(row, result, ready, obs.stable_value, obs.panic_value, now)
        if result.valid:
            self._writer.apply(model.name, row, result.desired)
        return result

    def tick(self) -> None:
        """Decide every model once; called every tick_s by run(), or directly by tests."""
        started = time.perf_counter()
        now = self.clock()
        n = len(self._configs)
        if n == 0:
            return
        if self._config_dirty:
            self._rebuild_config()
        ready_of = self.backend.ready_replicas
        ready = np.array([ready_of(name) if name else 0 for name in self._names], dtype=np.int64)
        poked = np.zeros(n, dtype=np.bool_)
        for name in self._pokes:
            poked[self._row_of[name]] = True
        self._pokes.clear()
        stable, panic = self._windows.observe(self._use_rps, now, np.arange(n, dtype=np.int64))
        if self._stale(now):
            stable, panic = np.full(n, np.nan), np.full(n, np.nan)
        result = decide_batch(self._batch_config, self._state, stable, panic, ready, poked, now)
        desired, valid = result.desired, result.valid
        ebc, in_panic = result.excess_burst_capacity, result.panic
        for model in self._custom:
            if model.policy is not None:
                r = model.row
                s, p = float(stable[r]), float(panic[r])
                obs = Observation(
                    None if np.isnan(s) else s, None if np.isnan(p) else p, int(ready[r]), poked[r]
                )
                one = model.policy.decide(obs, now)
                desired[r], valid[r], ebc[r], in_panic[r] = (
                    one.desired,
                    one.valid,
                    one.excess_burst_capacity,
                    one.panic,
                )
        valid &= self._occupied
        self._rows.record_batch(self._occupied, ready, stable, panic, (desired, valid, ebc, in_panic), now)
        changed = np.flatnonzero(valid & (desired != self._rows.told[:n]))
        for row in changed.tolist():
            self._writer.apply(self._names[row], row, int(desired[row]))
        if self._last_resync_at is None or now - self._last_resync_at >= self.resync_s:
            self._last_resync_at = now
            self._writer.resync()
        self.last_tick_s = time.perf_counter() - started

    def _rebuild_config(self) -> None:
        if len(self._batch_config.target_value) == len(self._configs):
            for row in self._dirty_rows:  # a few specs changed: patch their rows
                self._batch_config.set(row, self._configs[row])
                self._use_rps[row] = self._configs[row].metric == "rps"
        else:  # the arrays grew
            self._batch_config = BatchConfig.from_configs(self._configs)
            self._use_rps = np.array([c.metric == "rps" for c in self._configs], dtype=np.bool_)
        self._dirty_rows.clear()
        self._custom = [m for m in self._models.values() if m.policy is not None]
        width = int(self._batch_config.delay_buckets.max())
        if width > self._state.delay_ring.shape[1]:
            self._state = self._state.grown(len(self._state.desired), width)
        self._config_dirty = False

    # --- artifacts ----------------------------------------------------------------------------

    def _prefetch(self, name: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # run() prefetches every model when it starts

        async def prefetch() -> None:
            try:
                await self.backend.prefetch(name)
            except Exception:
                log.exception("prefetch failed model=%s", name)

        task = loop.create_task(prefetch(), name=f"prefetch-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every tick_s until cancelled."""
        loop = self._writer.loop = asyncio.get_running_loop()
        for name in list(self._models):
            self._prefetch(name)
        if self._pokes:
            self._poke_scheduled = True
            loop.call_soon(self._decide_pokes)
        next_at = loop.time()
        try:
            while True:
                try:
                    self.tick()
                except Exception:
                    log.exception("autoscaler tick failed")
                next_at += self.tick_s
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            self._writer.closing = True
            pending = [*self._background, *self._writer.scaling.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- observability ------------------------------------------------------------------------

    def __contains__(self, model: object) -> bool:
        return model in self._models

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "models": {name: self._model_status(model) for name, model in self._models.items()},
            "stale": self._stale(now),
            "last_report_age_s": None if self._last_report_at is None else now - self._last_report_at,
            "last_tick_ms": None if self.last_tick_s is None else self.last_tick_s * 1e3,
        }

    def model_status(self, name: str) -> dict[str, Any] | None:
        model = self._models.get(name)
        return None if model is None else self._model_status(model)

    def _model_status(self, model: _Model) -> dict[str, Any]:
        return self._rows.status(model.row, model.config.metric, model.svc.scaling.policy)

    def decision_rows(self) -> Iterator[DecisionRow]:
        for name, model in list(self._models.items()):
            yield self._rows.decision_row(name, model.row)
