"""A model at zero whose artifacts were prefetched cold-starts without a download."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ROOT, free_port
from tests.e2e.harness import Up

IRIS = ROOT / "examples" / "iris"


class ArtifactServer:
    """nginx-style JSON directory listing + files with Range support; counts file downloads."""

    def __init__(self) -> None:
        self.file_gets = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/iris/", self.listing)
        app.router.add_get("/iris/{name}", self.file)
        return app

    async def listing(self, request: web.Request) -> web.Response:
        entries = [{"name": p.name, "type": "file", "size": p.stat().st_size,
                    "mtime": "Mon, 23 Nov 2026 00:00:00 GMT"}
                   for p in sorted(IRIS.iterdir()) if p.is_file()]
        return web.json_response(entries)

    async def file(self, request: web.Request) -> web.StreamResponse:
        path = IRIS / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        self.file_gets += 1
        return web.FileResponse(path)


@pytest.fixture
async def artifacts() -> AsyncIterator[tuple[ArtifactServer, int]]:
    server = ArtifactServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, port
    await runner.cleanup()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        text: str = r.read().decode()
        return text


async def _until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_prefetched_model_cold_starts_from_the_cache(
        artifacts: tuple[ArtifactServer, int], tmp_path: Path) -> None:
    server, port = artifacts
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
kind: ModelService
metadata: {{name: iris}}
spec:
  storageUri: http://127.0.0.1:{port}/iris/
  runtime: {{model: iris}}
  scaling: {{initialScale: 0}}
""")
    files = sum(1 for p in IRIS.iterdir() if p.is_file())
    up = Up(spec, extra=["--cache-dir", str(tmp_path / "cache")])
    try:
        await asyncio.to_thread(up.wait_up)
        # Prefetch at registration: every file downloaded once, while the model sits at zero.
        await _until(lambda: server.file_gets >= files, 30, "the prefetch")
        assert (await asyncio.to_thread(up.status))["models"]["iris"]["ready"] == 0
        async with aiohttp.ClientSession() as s:
            async with s.post(up.url + "/v1/models/iris:predict",
                              json={"instances": [[5.1, 3.5, 1.4, 0.2]]}) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Zeroserve-Cold-Start"] == "true"
        assert server.file_gets == files      # the cold start downloaded nothing
        metrics = await asyncio.to_thread(_get, up.admin + "/metrics")
        hit = [line for line in metrics.splitlines()
               if line.startswith('zeroserve_storage_bytes_total{cache="hit",scheme="http"}')]
        assert hit and float(hit[0].split()[-1]) > 0, metrics[-2000:]
        assert "cache hit" in up.output()
    finally:
        assert up.stop() == 0, up.output()
