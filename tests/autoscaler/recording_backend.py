"""A Backend that runs no replicas: it records every call, and tests set its ready counts.

Hand-written because the real backends start processes or talk to Kubernetes; the autoscaler only
sees the protocol, so this is the whole of what it can observe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autoscaler.backends.base import EndpointCallback, EndpointSet
from zeroserve.spec import ModelService


@dataclass
class ScaleCall:
    model: str
    replicas: int
    at_perf_s: float  # time.perf_counter() when the call arrived


@dataclass
class RecordingBackend:
    scale_delay_s: float = 0.0  # how long each scale call takes
    fail_next: int = 0  # this many scale calls raise
    calls: list[ScaleCall] = field(default_factory=list)
    ready: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    prefetched: list[str] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0
    follow: bool = False  # ready follows the target at once
    on_scale: Callable[[ScaleCall], None] | None = None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def register(self, svc: ModelService) -> None:
        self.targets.setdefault(svc.name, 0)

    def unregister(self, name: str) -> None:
        self.targets.pop(name, None)

    async def scale(self, model: str, replicas: int) -> None:
        call = ScaleCall(model, replicas, time.perf_counter())
        self.calls.append(call)
        if self.on_scale is not None:
            self.on_scale(call)
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight[model])
        try:
            if self.scale_delay_s:
                await asyncio.sleep(self.scale_delay_s)
            if self.fail_next > 0:
                self.fail_next -= 1
                raise RuntimeError("backend refused")
            self.targets[model] = replicas
            if self.follow:
                self.ready[model] = replicas
        finally:
            self.in_flight[model] -= 1

    async def prefetch(self, model: str) -> None:
        self.prefetched.append(model)

    def ready_replicas(self, model: str) -> int:
        return self.ready.get(model, 0)

    def endpoints(self, model: str) -> EndpointSet:
        return EndpointSet(model)

    def subscribe(self, callback: EndpointCallback) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {name: {"desired": n, "ready": self.ready.get(name, 0)} for name, n in self.targets.items()}

    def scales_of(self, model: str) -> list[int]:
        return [c.replicas for c in self.calls if c.model == model]
