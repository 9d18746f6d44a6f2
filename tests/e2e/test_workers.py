"""`zeroserve up --workers 2`: two activator processes share the port; both queue cold requests,
poke the one autoscaler, and have their load reports summed by it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from tests.e2e.harness import Up

SPEC = """
kind: ModelService
metadata: {name: tiny}
spec:
  runtime: {model: tiny-llm, loadTime: 1s, tokenLatency: 20ms}
  scaling: {initialScale: 0, stableWindow: 6s, tickInterval: 0.5s}
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    spec = tmp_path_factory.mktemp("workers") / "spec.yaml"
    spec.write_text(SPEC)
    server = Up(spec, extra=["--workers", "2"])
    try:
        server.wait_up()
        server.wait_for(lambda st: st["workers"] == 2, 60, "the second worker")
        yield server
    finally:
        assert server.stop() == 0, server.output()


async def _complete(url: str, i: int) -> int:
    # A fresh connection per request, so the kernel spreads them over both processes.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async with s.post(url + "/v1/completions",
                          json={"model": "tiny", "prompt": str(i), "max_tokens": 10}) as r:
            await r.read()
            return r.status


async def test_cold_burst_over_two_workers_is_answered_and_load_is_merged(up: Up) -> None:
    codes = await asyncio.gather(*[_complete(up.url, i) for i in range(40)])
    assert codes == [200] * 40
    # Both processes reported load to the autoscaler.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        status = await asyncio.to_thread(up.status)
        if len(status["activators"]) >= 2:
            break
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.2)
    assert status["models"]["tiny"]["ready"] >= 1


