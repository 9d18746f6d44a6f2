"""The hf runtime through `up`'s activator: a warm pool process takes the cold start and is
replaced; the openai SDK streams from it. CPU torch, a tiny random Llama made here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import free_port
from zeroserve.spec import parse_specs
from zeroserve.up import Stack, UpConfig

pytest.importorskip("torch")
pytest.importorskip("transformers")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.hf.conftest import make_llama

    return make_llama(tmp_path_factory.mktemp("llama"), tie=True, dtype="bfloat16")


@pytest.fixture
async def stack(llama_dir: Path, tmp_path: Path,
                registry: CollectorRegistry) -> AsyncIterator[Stack]:
    spec = f"""
kind: ModelService
metadata: {{name: llama}}
spec:
  storageUri: file://{llama_dir}
  runtime: {{kind: hf, prewarm: 1}}
  scaling: {{initialScale: 0, stableWindow: 60s, tickInterval: 0.5s}}
"""
    config = UpConfig(files=(), port=free_port(), admin_port=free_port(), drain_s=2,
                      stop_grace_s=5, cache_dir=tmp_path / "cache")
    stack = Stack(parse_specs(spec), config, registry=registry)
    await stack.start()
    yield stack
    await stack.stop()


async def _wait_pool(stack: Stack, predicate: object, timeout_s: float) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        pool = stack.backend.pool_status()
        if predicate(pool):  # type: ignore[operator]
            return pool
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"pool never matched: {pool}")
        await asyncio.sleep(0.2)


async def test_cold_start_uses_a_warm_pool_process_and_replaces_it(stack: Stack) -> None:
    pool = await _wait_pool(stack, lambda p: any(x["state"] == "idle" for x in p), 120)
    warm_id = next(x["id"] for x in pool if x["state"] == "idle")
    assert stack.status()["models"]["llama"]["ready"] == 0, stack.status()
    url = f"http://127.0.0.1:{stack.config.port}"
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/completions", json={
                "model": "llama", "prompt": "hello", "max_tokens": 3, "stream": True}) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-Zeroserve-Cold-Start"] == "true"
            body = await r.read()
    assert body.rstrip().endswith(b"data: [DONE]")
    pool = stack.backend.pool_status()
    busy = [x for x in pool if x["state"] == "busy"]
    assert [x["id"] for x in busy] == [warm_id]          # the warm one served the cold start
    assert busy[0]["model"] == "llama"
    await _wait_pool(stack, lambda p: any(x["state"] in ("warming", "idle") for x in p), 10)
    # Every cold-start phase, the first token included, is timed and exported.
    deadline = asyncio.get_running_loop().time() + 10
    while "first_token" not in stack.backend.last_phases("llama"):
        assert asyncio.get_running_loop().time() < deadline, stack.backend.last_phases("llama")
        await asyncio.sleep(0.1)
    assert set(stack.backend.last_phases("llama")) == {"schedule", "fetch", "start", "load",
                                                        "first_token"}
    assert stack.backend.status()["llama"]["last_load_source"] == "disk"

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    chunks = [c async for c in await client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)]
    assert chunks and chunks[0].model == "llama"
    await client.close()
