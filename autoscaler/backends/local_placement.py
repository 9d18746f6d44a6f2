"""GPU placement for the local backend: which whole devices a new replica gets, and whom to evict.

A replica gets `runtime.gpus` whole devices, those with the most free memory. When a model with
waiting requests needs a GPU and all are held, the least recently used *idle* model (no requests in
flight or queued) is stopped to make room; an idle model never evicts another, which is what keeps
two models on one GPU from evicting each other in a loop. A replica that cannot be placed waits in
`pending` and is retried when a GPU frees up or demand changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from autoscaler.backends.local_replica import ModelState, ReplicaProc

log = logging.getLogger(__name__)

# (victim, its replica, the model that wants the GPU): stop the replica, then place the wanting one.
Evict = Callable[[ModelState, ReplicaProc, ModelState], None]


class GpuPlacer:
    def __init__(self, gpus: Any | None, models: Mapping[str, ModelState],
                 demand: Callable[[str], int], evict: Evict) -> None:
        self.gpus = gpus                 # runtime.gpu.GpuInventory-like: devices() -> [GpuInfo]
        self.models = models
        self.demand = demand
        self.evict = evict
        # GPUs freed by an eviction belong to the model that evicted: nobody else may take them.
        self.reserved: dict[int, str] = {}

    def assignments(self) -> dict[int, list[str]]:
        held: dict[int, list[str]] = {}
        for name, st in self.models.items():
            for r in st.replicas:
                for g in r.gpus:
                    held.setdefault(g, []).append(name)
        return held

    def release(self, model: str) -> None:
        """`model` went to zero: the GPUs it evicted others for are free for anyone again."""
        self.reserved = {g: m for g, m in self.reserved.items() if m != model}

    def place(self, state: ModelState) -> tuple[int, ...] | None:
        want = state.svc.runtime.gpus
        if want == 0 or self.gpus is None:
            return ()
        devices = self.gpus.devices()
        if len(devices) < want:
            state.pending_reason = f"needs {want} GPUs, this machine has {len(devices)}"
            log.warning("cannot place model=%s: %s", state.svc.name, state.pending_reason)
            return None
        held = self.assignments()
        need_mem = state.svc.runtime.gpu_memory_bytes
        name = state.svc.name
        free = [
            d
            for d in devices
            if d.index not in held
            and self.reserved.get(d.index, name) == name
            and (not need_mem or d.memory_total_bytes - d.memory_used_bytes >= need_mem)
        ]
        if len(free) >= want:
            # Reserved-for-us first, then the most free memory.
            free.sort(
                key=lambda d: (
                    self.reserved.get(d.index) != name,
                    -(d.memory_total_bytes - d.memory_used_bytes),
                )
            )
            chosen = tuple(d.index for d in free[:want])
            for g in chosen:
                self.reserved.pop(g, None)
            return chosen
        if any(m == name for m in self.reserved.values()):
            state.pending_reason = "waiting for an evicted model to release its GPU"
            return None
        if self.demand(state.svc.name) > 0 and self._evict_idle(state):
            state.pending_reason = "waiting for an evicted model to release its GPU"
            return None
        state.pending_reason = f"all {len(devices)} GPUs are held by busy models"
        log.warning("cannot place model=%s: %s; its requests stay queued", state.svc.name,
                    state.pending_reason)
        return None

    def _evict_idle(self, wanting: ModelState) -> bool:
        idle = [st for st in self.models.values()
                if st is not wanting and st.svc.runtime.gpus > 0
                and any(r.gpus and not r.stopping for r in st.replicas)
                and self.demand(st.svc.name) == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda st: st.last_used)
        log.info("evicting idle model=%s to make room for model=%s", victim.svc.name, wanting.svc.name)
        # The victim keeps its desired count (the autoscaler's to change): it waits, pending, and
        # its own next request can evict whoever is idle then.
        victim.pending_reason = f"evicted to make room for {wanting.svc.name}"
        for r in list(victim.replicas):
            if not r.stopping:
                for g in r.gpus:
                    self.reserved[g] = wanting.svc.name
                self.evict(victim, r, wanting)
        return True
