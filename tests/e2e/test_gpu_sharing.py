"""Two models competing for one GPU (a hand-written NVML fake, injected at the inventory)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from runtime.gpu import GpuInventory
from tests.conftest import free_port
from tests.runtime.fake_nvml import FakeGpu, FakeNvml
from zeroserve.spec import parse_specs
from zeroserve.up import Stack, UpConfig

SPEC = """
kind: ModelService
metadata: {name: alpha}
spec:
  runtime: {model: iris, gpus: 1}
  scaling: {initialScale: 0, stableWindow: 60s, scaleToZeroGracePeriod: 60s, tickInterval: 0.5s}
---
kind: ModelService
metadata: {name: beta}
spec:
  runtime: {model: iris, gpus: 1}
  scaling: {initialScale: 0, stableWindow: 60s, scaleToZeroGracePeriod: 60s, tickInterval: 0.5s}
"""


@pytest.fixture
async def stack(tmp_path: Path, registry: CollectorRegistry) -> AsyncIterator[Stack]:
    nvml = FakeNvml(gpus=[FakeGpu()])     # one 80 GiB GPU
    config = UpConfig(files=(), port=free_port(), admin_port=free_port(), drain_s=2,
                      stop_grace_s=3, cache_dir=tmp_path / "cache")
    stack = Stack(parse_specs(SPEC), config, registry=registry, gpus=GpuInventory(nvml))
    await stack.start()
    yield stack
    await stack.stop()


async def _predict(session: aiohttp.ClientSession, url: str, model: str) -> int:
    async with session.post(f"{url}/v1/models/{model}:predict",
                            json={"instances": [[5.1, 3.5, 1.4, 0.2]]}) as r:
        await r.read()
        return r.status


# Each request may wait for a replica to stop (3 s grace) and another to start (10-15 s of imports
# on an overloaded 2-core machine).
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60)


async def test_request_for_idle_model_evicts_the_other(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.config.port}"
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as s:
        assert await _predict(s, url, "alpha") == 200
        assert stack.status()["gpus"] == {"0": ["alpha"]}
        # alpha is now idle and holds the only GPU; beta's request must evict it.
        assert await _predict(s, url, "beta") == 200
        status = stack.status()
        assert status["gpus"] == {"0": ["beta"]}
        assert status["models"]["beta"]["replicas"][0]["gpus"] == [0]
        assert status["models"]["alpha"]["ready"] == 0
        # And back: alpha's next request evicts the now idle beta; both answered.
        assert await _predict(s, url, "alpha") == 200
        assert stack.status()["gpus"] == {"0": ["alpha"]}


async def test_busy_model_is_not_evicted_request_waits(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.config.port}"
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as s:
        assert await _predict(s, url, "alpha") == 200
        # Hold alpha busy by pretending it has demand: its requests are queued/in flight.
        stack.backend.demand = lambda model: 1
        task = asyncio.create_task(_predict(s, url, "beta"))
        # Wait for beta's placement to be tried (request, poke, decision, scale), however long a
        # loaded machine takes; then give a wrong eviction a moment to happen.
        deadline = asyncio.get_running_loop().time() + 20
        while stack.status()["models"]["beta"]["pending"] is None:
            assert asyncio.get_running_loop().time() < deadline, stack.status()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert not task.done()
        assert stack.status()["models"]["beta"]["pending"] is not None
        assert stack.status()["gpus"] == {"0": ["alpha"]}
        task.cancel()
