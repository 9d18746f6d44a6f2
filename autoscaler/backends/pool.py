"""Warm runtime pool for the local backend: hf replica processes started before they are needed.

A pool process has imported torch and transformers, created its CUDA context and generated once
with a tiny model, but holds no model (`zeroserve serve --runtime hf --pool`). A scale from zero
takes an idle one and hands it the model (`POST /pool/load`), so the cold start costs load + first
token, not imports and warm-up; a replacement is started in the background. A scale to zero hands
the process back (`POST /pool/unload`, parking the weights in host memory when `scaling.park`),
so the next start of the same model is a host-to-device copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler.backends import local_spawn

log = logging.getLogger(__name__)


@dataclass
class PoolProc:
    id: str
    port: int
    gpus: tuple[int, ...]
    process: asyncio.subprocess.Process
    state: str = "warming"            # warming | idle | busy | dead
    model: str | None = None
    parked: tuple[str, ...] = ()
    rss_bytes: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class PoolManager:
    def __init__(self, *, free_port: Callable[[], int], python: str = sys.executable,
                 warm_timeout_s: float = 300.0, max_idle: int = 4) -> None:
        self.free_port = free_port
        self.python = python
        self.warm_timeout_s = warm_timeout_s
        self.max_idle = max_idle          # idle processes kept, parked weights included
        self.procs: list[PoolProc] = []
        self.targets: dict[tuple[int, ...], int] = {}
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def want(self, gpus: tuple[int, ...], n: int) -> None:
        """Keep at least n warm processes (warming or idle) on this GPU set."""
        self.targets[gpus] = max(self.targets.get(gpus, 0), n)
        self._fill(gpus)

    def _fill(self, gpus: tuple[int, ...]) -> None:
        if self.closed:
            return
        spare = [p for p in self.procs if p.gpus == gpus and p.state in ("warming", "idle")]
        for _ in range(self.targets.get(gpus, 0) - len(spare)):
            self._spawn(gpus)

    def _spawn(self, gpus: tuple[int, ...]) -> None:
        task = asyncio.create_task(self._start(gpus), name="pool-start")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, gpus: tuple[int, ...]) -> None:
        from runtime import pool as client

        self._seq += 1
        port = self.free_port()
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
        if "ZEROSERVE_PARK_BUDGET_BYTES" not in env:
            # A quarter of the host's memory for parked weights, shared by the idle processes.
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            env["ZEROSERVE_PARK_BUDGET_BYTES"] = str(total // 4 // max(1, self.max_idle))
        argv = [self.python, "-m", "zeroserve", "serve", "--runtime", "hf", "--pool",
                "--host", "127.0.0.1", "--port", str(port)]
        process = await local_spawn.spawn(argv, env=env)
        proc = PoolProc(f"pool-{self._seq}", port, gpus, process)
        self.procs.append(proc)
        log.info("starting pool process %s port=%d gpus=%s", proc.id, port, gpus or "-")
        try:
            st = await client.wait_ready("127.0.0.1", port, timeout_s=self.warm_timeout_s)
        except client.PoolError as e:
            log.error("pool process %s did not warm up: %s", proc.id, e)
            await self._kill(proc)
            return
        proc.state = "idle" if st.state == "idle" else "dead"
        proc.rss_bytes = st.rss_bytes
        proc.ready.set()
        log.info("pool process %s warm (rss %.0f MiB)", proc.id, st.rss_bytes / 2**20)
        watcher = asyncio.create_task(self._watch(proc), name=f"watch-{proc.id}")
        self._tasks.add(watcher)
        watcher.add_done_callback(self._tasks.discard)

    async def _watch(self, proc: PoolProc) -> None:
        await proc.process.wait()
        if proc.state != "dead":
            log.warning("pool process %s exited with %s", proc.id, proc.process.returncode)
        proc.state = "dead"
        proc.ready.set()
        if proc in self.procs:
            self.procs.remove(proc)
        self._fill(proc.gpus)

    async def take(self, model: str, gpus: tuple[int, ...]) -> PoolProc:
        """An idle process for `model` on `gpus` (one that parks it first); waits for warm-up."""
        from runtime import pool as client

        self.want(gpus, 1)
        while True:
            idle = {p.id: p for p in self.procs if p.gpus == gpus and p.state == "idle"}
            statuses = {pid: client.PoolStatus("idle", None, p.parked, p.rss_bytes, {})
                        for pid, p in idle.items()}
            chosen = client.choose(statuses, model)
            if chosen is not None:
                proc = idle[chosen]
                proc.state = "busy"
                proc.model = model
                self._fill(gpus)      # start its replacement in the background
                return proc
            warming = [p for p in self.procs if p.gpus == gpus and p.state == "warming"]
            if not warming:
                self._spawn(gpus)
                await asyncio.sleep(0.05)
                continue
            await asyncio.wait([asyncio.create_task(p.ready.wait()) for p in warming],
                               timeout=self.warm_timeout_s, return_when=asyncio.FIRST_COMPLETED)

    async def give_back(self, proc: PoolProc, *, park: bool) -> None:
        """Scale to zero without ending the process; the process is idle (and maybe parks)."""
        from runtime import pool as client

        try:
            await client.unload("127.0.0.1", proc.port, park=park)
            st = await client.status("127.0.0.1", proc.port)
            proc.parked = st.parked
            proc.state = "idle"
            proc.model = None
        except client.PoolError as e:
            log.warning("pool process %s failed to unload (%s); stopping it", proc.id, e)
            await self._kill(proc)
            return
        idle = [p for p in self.procs if p.state == "idle"]
        if len(idle) > self.max_idle:
            # Too many idle processes: end the oldest that parks nothing, else the oldest.
            victim = next((p for p in idle if not p.parked), idle[0])
            await self._kill(victim)

    async def _kill(self, proc: PoolProc, grace_s: float = 10.0) -> None:
        proc.state = "dead"
        proc.ready.set()
        if proc.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.process.pid, signal.SIGKILL)
                await proc.process.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._kill(p) for p in list(self.procs)), return_exceptions=True)

    def status(self) -> list[dict[str, Any]]:
        return [{"id": p.id, "port": p.port, "gpus": list(p.gpus), "state": p.state,
                 "model": p.model, "parked": list(p.parked), "rss_bytes": p.rss_bytes}
                for p in self.procs]
