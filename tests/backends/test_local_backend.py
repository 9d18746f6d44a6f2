"""The local backend with real replica processes (`zeroserve serve --model iris`)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from autoscaler.backends.base import EndpointSet
from autoscaler.backends.local import LocalBackend
from zeroserve.spec import parse_specs

Started = tuple[LocalBackend, "Recorder"]

SPEC = """
kind: ModelService
metadata: {name: iris}
spec: {runtime: {model: iris}}
"""


class Recorder:
    def __init__(self) -> None:
        self.sets: list[EndpointSet] = []
        self.changed = asyncio.Event()

    def __call__(self, model: str, eps: EndpointSet) -> None:
        self.sets.append(eps)
        self.changed.set()

    async def wait(self, predicate: object, timeout_s: float = 60) -> EndpointSet:
        # Generous: a replica's start (imports) took 10-15 s on an overloaded 2-core machine.
        async def loop() -> EndpointSet:
            while True:
                if self.sets and predicate(self.sets[-1]):  # type: ignore[operator]
                    return self.sets[-1]
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(loop(), timeout_s)


@pytest.fixture
async def backend(registry: CollectorRegistry) -> AsyncIterator[tuple[LocalBackend, Recorder]]:
    b = LocalBackend(registry=registry, stop_grace_s=5)
    rec = Recorder()
    b.subscribe(rec)
    await b.start()
    b.register(parse_specs(SPEC)[0])
    yield b, rec
    await b.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


async def test_scale_up_serves_and_scale_down_unpublishes_before_stopping(backend: Started) -> None:
    b, rec = backend
    await b.scale("iris", 1)
    eps = await rec.wait(lambda s: len(s.ready) == 1)
    assert b.ready_replicas("iris") == 1
    async with aiohttp.ClientSession() as s:
        async with s.post(eps.ready[0].url + "/v1/models/iris:predict",
                          json={"instances": [[5.1, 3.5, 1.4, 0.2]]}) as r:
            assert r.status == 200
    pid = b.status()["iris"]["replicas"][0]["pid"]
    phases = b.last_phases("iris")
    assert set(phases) == {"schedule", "fetch", "start", "load"}

    pid_alive_when_unpublished: list[bool] = []
    b.subscribe(lambda m, e: pid_alive_when_unpublished.append(_alive(pid)) if not e.ready else None)
    await b.scale("iris", 0)
    await rec.wait(lambda s: not s.ready)
    deadline = asyncio.get_running_loop().time() + 20   # drain, SIGTERM, exit: slow when loaded
    while b.status()["iris"]["replicas"]:
        assert asyncio.get_running_loop().time() < deadline, b.status()
        await asyncio.sleep(0.05)
    assert not _alive(pid)
    # The endpoint left the rotation while the process was still running (drain, then stop).
    assert pid_alive_when_unpublished[0] is True


async def test_a_replica_that_dies_is_replaced(backend: Started) -> None:
    b, rec = backend
    await b.scale("iris", 1)
    await rec.wait(lambda s: len(s.ready) == 1)
    pid = b.status()["iris"]["replicas"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    await rec.wait(lambda s: not s.ready)
    eps = await rec.wait(lambda s: len(s.ready) == 1)
    new_pid = b.status()["iris"]["replicas"][0]["pid"]
    assert new_pid != pid and _alive(new_pid)
    assert eps.ready[0].id != "iris-1"


async def test_a_crashing_command_backs_off_instead_of_looping(registry: CollectorRegistry) -> None:
    b = LocalBackend(registry=registry, stop_grace_s=1)
    await b.start()
    (svc,) = parse_specs("kind: ModelService\nmetadata: {name: bad}\n"
                         "spec: {runtime: {command: [sh, -c, 'exit 3']}}")
    b.register(svc)
    try:
        await b.scale("bad", 1)
        # From the first crash on (however long a loaded machine takes to get there), 2 s hold
        # at most 3: 0.5 s, 1 s, 2 s ... between attempts, a handful, not hundreds.
        deadline = asyncio.get_running_loop().time() + 20
        while b.models["bad"].crashes == 0:
            assert asyncio.get_running_loop().time() < deadline, "the command never ran"
            await asyncio.sleep(0.01)
        await asyncio.sleep(2.0)
        assert 1 <= b.models["bad"].crashes <= 3
    finally:
        await b.close()


async def test_unknown_model_is_an_error(backend: Started) -> None:
    b, _ = backend
    from autoscaler.backends.base import BackendError

    with pytest.raises(BackendError):
        await b.scale("nope", 1)
