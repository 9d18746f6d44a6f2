"""The local backend: replicas are processes on this machine, placed on its GPUs.

A replica's life: (schedule) pick GPUs -> (fetch) link artifacts from the node cache -> (start)
spawn `runtime.command` -> (load) probe readiness until 200 -> published as a ready endpoint.
Scale-down takes the endpoint out of rotation *first*, then SIGTERMs the process and kills it
after a grace period, so no new request is sent to a replica that is going away. A replica that
dies is noticed at once (we await its exit) and replaced, with a crash-loop backoff; why it failed
(exit code, the tail of its stderr) stays in `status()` until a replica of the model is ready again.
Children get SIGTERM when this process dies (`local_spawn.py`), so none outlives a killed `up`.

Where replicas go (whole GPUs, eviction of idle models) is `local_placement.py`; the pieces of one
replica process (command line, environment, readiness probe, termination) are `local_replica.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from autoscaler.backends import local_replica, local_spawn
from autoscaler.backends.base import BackendError, EndpointCallback, EndpointSet
from autoscaler.backends.local_placement import GpuPlacer
from autoscaler.backends.local_replica import ModelState, ReplicaProc, describe_exit, free_port
from autoscaler.backends.pool import PoolManager
from zeroserve.spec import ModelService

log = logging.getLogger(__name__)

PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class LocalBackend:
    def __init__(self, *, gpus: Any | None = None, work_dir: Path | None = None,
                 stop_grace_s: float = 30.0, probe_interval_s: float = 0.02,
                 demand: Callable[[str], int] | None = None,
                 registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 python: str = sys.executable, cache: Any | None = None) -> None:
        self.gpus = gpus                 # runtime.gpu.GpuInventory-like: devices() -> [GpuInfo]
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="zeroserve-replicas-"))
        self.stop_grace_s = stop_grace_s
        self.probe_interval_s = probe_interval_s
        self.demand = demand or (lambda model: 0)
        self.clock = clock
        self.python = python
        self.cache = cache
        self.models: dict[str, ModelState] = {}
        self._callbacks: list[EndpointCallback] = []
        self._session: aiohttp.ClientSession | None = None
        self._seq = 0
        self._closed = False
        self._stoppers: set[asyncio.Task[None]] = set()
        self.pool = PoolManager(free_port=free_port, python=python)
        # Demand is read through self at each use: whoever wires the backend may replace it later.
        self.placer = GpuPlacer(gpus, self.models, lambda model: self.demand(model),
                                lambda victim, r, wanting: self._spawn_stopper(victim, r, then=wanting))
        self.cold_start_seconds = Histogram(
            "zeroserve_cold_start_seconds", "Replica start time by phase", ["model", "phase"],
            buckets=PHASE_BUCKETS, registry=registry if registry is not None else REGISTRY)

    # --- Backend protocol ---------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))

    async def close(self) -> None:
        self._closed = True
        stops = [self._stop(st, r) for st in self.models.values() for r in list(st.replicas)]
        await asyncio.gather(*stops, return_exceptions=True)
        await self.pool.close()
        if self._stoppers:
            await asyncio.gather(*self._stoppers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def register(self, svc: ModelService) -> None:
        state = self.models.get(svc.name)
        if state is None:
            self.models[svc.name] = ModelState(svc)
        else:
            state.svc = svc
        if self._uses_pool(svc):
            # Warm processes on every GPU a replica of this model could land on (or the CPU).
            devices = self.gpus.devices() if self.gpus is not None and svc.runtime.gpus else []
            choices: list[tuple[int, ...]] = [(d.index,) for d in devices] or [()]
            for gpus in choices:
                self.pool.want(gpus, svc.runtime.prewarm)

    @staticmethod
    def _uses_pool(svc: ModelService) -> bool:
        return svc.runtime.kind == "hf" and svc.runtime.prewarm > 0 and svc.runtime.gpus <= 1

    def unregister(self, name: str) -> None:
        state = self.models.pop(name, None)
        if state is not None:
            for r in list(state.replicas):
                self._spawn_stopper(state, r)

    async def scale(self, model: str, replicas: int) -> None:
        state = self.models.get(model)
        if state is None:
            raise BackendError(f"model {model!r} is not registered")
        if replicas > 0 and state.desired == 0:
            # A fresh start tries at once, and tells again what went wrong if it still does.
            state.crashes = 0
            state.logged_failure = None
        if replicas == 0:
            self.placer.release(model)
        state.desired = replicas
        self._reconcile(state)

    async def prefetch(self, model: str) -> None:
        state = self.models.get(model)
        if state is None or not state.svc.storage_uri or self.cache is None:
            return
        from runtime.storage import prefetch

        started = self.clock()
        await prefetch(state.svc.storage_uri, self.cache)
        log.info("prefetched model=%s uri=%s in %.2fs", model, state.svc.storage_uri,
                 self.clock() - started)

    def ready_replicas(self, model: str) -> int:
        state = self.models.get(model)
        return sum(1 for r in state.replicas if r.ready and not r.stopping) if state else 0

    def endpoints(self, model: str) -> EndpointSet:
        state = self.models.get(model)
        if state is None:
            return EndpointSet(model)
        ready = tuple(r.endpoint for r in state.replicas if r.ready and not r.stopping)
        return EndpointSet(model, ready, state.version)

    def subscribe(self, callback: EndpointCallback) -> None:
        self._callbacks.append(callback)

    def last_phases(self, model: str) -> dict[str, float]:
        state = self.models.get(model)
        return dict(state.last_phases) if state else {}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, st in self.models.items():
            out[name] = {
                "desired": st.desired,
                "ready": self.ready_replicas(name),
                "replicas": [{"id": r.id, "port": r.port, "gpus": list(r.gpus), "ready": r.ready,
                              "stopping": r.stopping,
                              "pid": r.process.pid if r.process else None}
                             for r in st.replicas],
                "pending": st.pending_reason,
                "last_cold_start": st.last_phases,
                "last_load_source": st.last_load_source,
                # Failed replicas since one was last ready, and why the latest one failed.
                "crashes": st.failures_since_ready,
                "last_failure": st.last_failure.as_dict() if st.last_failure else None,
            }
        return out

    def pool_status(self) -> list[dict[str, Any]]:
        return self.pool.status()

    def gpu_assignments(self) -> dict[int, list[str]]:
        return self.placer.assignments()

    # --- reconciliation -----------------------------------------------------------------------

    def _publish(self, state: ModelState) -> None:
        state.version += 1
        eps = self.endpoints(state.svc.name)
        for callback in self._callbacks:
            callback(state.svc.name, eps)

    def _reconcile(self, state: ModelState) -> None:
        if self._closed:
            return
        live = [r for r in state.replicas if not r.stopping]
        while len(live) > state.desired:
            # Prefer stopping replicas that are not ready yet, then the newest.
            victim = sorted(live, key=lambda r: (r.ready, -r.started_at))[0]
            live.remove(victim)
            self._spawn_stopper(state, victim)
        state.pending_reason = None
        while len(live) < state.desired:
            gpus = self.placer.place(state)
            if gpus is None:
                return
            replica = self._new_replica(state, gpus)
            live.append(replica)

    def _new_replica(self, state: ModelState, gpus: tuple[int, ...]) -> ReplicaProc:
        self._seq += 1
        replica = ReplicaProc(id=f"{state.svc.name}-{self._seq}", model=state.svc.name,
                              port=state.svc.runtime.port or free_port(), gpus=gpus,
                              started_at=self.clock())
        state.replicas.append(replica)
        replica.task = asyncio.create_task(self._run_replica(state, replica),
                                           name=f"replica-{replica.id}")
        return replica

    # --- one replica's life -------------------------------------------------------------------

    async def _run_replica(self, state: ModelState, replica: ReplicaProc) -> None:
        if self._uses_pool(state.svc):
            await self._run_pooled(state, replica)
            return
        svc = state.svc
        t0 = replica.started_at
        try:
            model_dir = await local_replica.artifacts_dir(svc, replica, self.work_dir, self.cache)
            t_fetched = self.clock()
            argv = local_replica.command(svc, replica, model_dir, work_dir=self.work_dir,
                                         python=self.python)
            env = local_replica.environment(svc, replica)
            log.info("starting replica model=%s replica=%s port=%d gpus=%s", svc.name, replica.id,
                     replica.port, ",".join(map(str, replica.gpus)) or "-")
            replica.process = await local_spawn.spawn(argv, env=env,
                                                      stderr=asyncio.subprocess.PIPE)
            replica.output.start(replica.process.stderr, replica.id)
            t_spawned = self.clock()
            listening_at = await local_replica.wait_ready(
                self._session, svc, replica, clock=self.clock, probe_interval_s=self.probe_interval_s)
            t_ready = self.clock()
        except Exception as e:
            reason = str(e) if isinstance(e, local_replica.StartFailed) else f"could not start: {e}"
            await self._on_exit(state, replica, failure=None if replica.stopping else reason)
            return
        if listening_at is None:       # it is being stopped
            await self._on_exit(state, replica, failure=None)
            return
        replica.phases = {"schedule": 0.0, "fetch": t_fetched - t0,
                          "start": listening_at - t_spawned + (t_spawned - t_fetched),
                          "load": t_ready - listening_at}
        state.last_phases = {k: round(v, 4) for k, v in replica.phases.items()}
        for phase, seconds in replica.phases.items():
            self.cold_start_seconds.labels(svc.name, phase).observe(seconds)
        log.info("replica ready model=%s replica=%s in %.3fs (fetch %.3f start %.3f load %.3f)",
                 svc.name, replica.id, t_ready - t0, replica.phases["fetch"],
                 replica.phases["start"], replica.phases["load"])
        self._mark_ready(state, replica)
        assert replica.process is not None
        code = await replica.process.wait()
        await self._on_exit(state, replica, failure=None if replica.stopping
                            else f"{describe_exit(code)} while serving")

    async def _run_pooled(self, state: ModelState, replica: ReplicaProc) -> None:
        """A replica served by a warm pool process: take one, hand it the model, serve."""
        from runtime import pool as client

        svc = state.svc
        t0 = replica.started_at
        try:
            model_dir = await local_replica.artifacts_dir(svc, replica, self.work_dir, self.cache)
            if model_dir is None:
                raise BackendError("the hf runtime needs spec.storageUri (a model directory)")
            t_fetched = self.clock()
            member = await self.pool.take(svc.name, replica.gpus)
            replica.pool_member = member
            replica.port = member.port
            replica.process = member.process
            t_taken = self.clock()
            result = await client.load("127.0.0.1", member.port, model_dir, svc.name,
                                       timeout_s=svc.runtime.ready_timeout_s)
            t_ready = self.clock()
        except Exception as e:
            if replica.pool_member is not None:
                await self.pool.give_back(replica.pool_member, park=False)
            await self._on_exit(state, replica,
                                failure=None if replica.stopping else f"pool load failed: {e}")
            return
        replica.phases = {"schedule": 0.0, "fetch": t_fetched - t0, "start": t_taken - t_fetched,
                          "load": t_ready - t_taken}
        state.last_phases = {k: round(v, 4) for k, v in replica.phases.items()}
        state.last_load_source = result.source
        for phase, seconds in replica.phases.items():
            self.cold_start_seconds.labels(svc.name, phase).observe(seconds)
        log.info("pooled replica ready model=%s replica=%s in %.3fs (from %s, %.1f GB/s)", svc.name,
                 replica.id, t_ready - t0, result.source, result.read_gbps)
        self._mark_ready(state, replica)
        watcher = asyncio.create_task(self._first_token(state, replica, member.port))
        exited = asyncio.create_task(member.process.wait())
        released = asyncio.create_task(replica.released.wait())
        await asyncio.wait([exited, released], return_when=asyncio.FIRST_COMPLETED)
        for task in (exited, released, watcher):
            task.cancel()
        code = member.process.returncode
        await self._on_exit(state, replica, failure=None if replica.stopping or code is None
                            else f"pool process {describe_exit(code)} while serving")

    async def _first_token(self, state: ModelState, replica: ReplicaProc, port: int) -> None:
        """The last cold-start phase: the first request's time to its first token, which the pool
        process measures; read it once it exists (the cold request is usually already waiting)."""
        from runtime import pool as client

        delay, deadline = 0.05, self.clock() + 60.0
        while replica.ready and self.clock() < deadline:
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 1.5)
            try:
                last = (await client.status("127.0.0.1", port)).raw.get("last_load") or {}
            except client.PoolError:
                return
            seconds = last.get("first_token_s")
            if isinstance(seconds, int | float):
                state.last_phases["first_token"] = round(float(seconds), 4)
                self.cold_start_seconds.labels(state.svc.name, "first_token").observe(seconds)
                return

    def _mark_ready(self, state: ModelState, replica: ReplicaProc) -> None:
        replica.ready = True
        if state.last_failure is not None:
            log.info("model=%s has a ready replica again after %d failed", state.svc.name,
                     state.failures_since_ready)
        state.crashes = state.failures_since_ready = 0
        state.last_failure = state.logged_failure = None
        state.last_used = self.clock()
        self._publish(state)

    async def _on_exit(self, state: ModelState, replica: ReplicaProc, *,
                       failure: str | None) -> None:
        """The replica is gone or going; `failure` says why when nobody asked it to stop."""
        exit_code = replica.process.returncode if replica.process is not None else None
        if replica.pool_member is None and replica.process is not None and \
                replica.process.returncode is None:
            await local_replica.terminate(replica, self.stop_grace_s)
        was_ready = replica.ready
        replica.ready = False
        if replica in state.replicas:
            state.replicas.remove(replica)
        # The replica's links into the node cache (or its empty dir); the cache keeps the data.
        shutil.rmtree(self.work_dir / replica.id, ignore_errors=True)
        if was_ready:
            self._publish(state)
        await replica.output.drained(timeout_s=1.0)     # its last words, for a failure report
        if failure is not None and not self._closed and self.models.get(state.svc.name) is state:
            record = local_replica.ReplicaFailure(replica.id, failure, exit_code,
                                                  replica.output.text(), time.time())
            await asyncio.sleep(local_replica.record_failure(state, record))
        if not self._closed:
            self._reconcile(state)
            self._reconcile_pending()

    def _reconcile_pending(self) -> None:
        for st in self.models.values():
            if st.pending_reason is not None:
                self._reconcile(st)

    def _spawn_stopper(self, state: ModelState, replica: ReplicaProc,
                       then: ModelState | None = None) -> None:
        async def stop() -> None:
            await self._stop(state, replica)
            if then is not None:
                self._reconcile(then)

        task = asyncio.create_task(stop(), name=f"stop-{replica.id}")
        self._stoppers.add(task)
        task.add_done_callback(self._stoppers.discard)

    async def _stop(self, state: ModelState, replica: ReplicaProc) -> None:
        if replica.stopping and replica.process is None:
            return
        was_ready = replica.ready and not replica.stopping
        replica.stopping = True
        if was_ready:
            self._publish(state)   # out of rotation before the signal
        log.info("stopping replica model=%s replica=%s", state.svc.name, replica.id)
        if replica.pool_member is not None:
            await self.pool.give_back(replica.pool_member, park=state.svc.scaling.park)
            replica.released.set()
        else:
            await local_replica.terminate(replica, self.stop_grace_s)
        if replica.task is not None and replica.task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(replica.task), 5)

    def kick(self, model: str) -> None:
        """A request is waiting for `model`: retry its placement if it is pending (it may now
        evict an idle model, which it could not do without demand)."""
        state = self.models.get(model)
        if state is not None and state.pending_reason is not None:
            self._reconcile(state)

    def touch(self, model: str) -> None:
        state = self.models.get(model)
        if state is not None:
            state.last_used = self.clock()
