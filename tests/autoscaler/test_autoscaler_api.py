"""The stats/poke/status HTTP API, on a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from recording_backend import RecordingBackend

from autoscaler.api import build_app, stats_routes
from autoscaler.loop import Autoscaler
from zeroserve.spec import ModelService, ScalingSpec

WALL = 1_700_000_000.0  # the senders' unix time in these tests


@dataclass
class Served:
    scaler: Autoscaler
    backend: RecordingBackend
    url: str
    session: aiohttp.ClientSession
    clock: list[float]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = [500.0]
    backend = RecordingBackend()
    scaler = Autoscaler(backend, clock=lambda: clock[0], registry=CollectorRegistry())
    scaler.upsert(ModelService(name="m", scaling=ScalingSpec(initial_scale=0)))
    runner = web.AppRunner(build_app(scaler, clock=lambda: clock[0], wall_clock=lambda: WALL))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    run = asyncio.create_task(scaler.run())
    async with aiohttp.ClientSession() as session:
        yield Served(scaler, backend, f"http://127.0.0.1:{port}", session, clock)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    await runner.cleanup()


def sample(at: object, concurrency: float = 3.0, **extra: object) -> dict[str, object]:
    return {
        "model": "m",
        "activator_id": "a1",
        "at": at,
        "avg_concurrency": concurrency,
        "requests": 6,
        **extra,
    }


async def test_stats_are_restamped_onto_the_local_clock(served: Served) -> None:
    served.clock[0] = 500.7
    body = {"samples": [sample(WALL - 0.5), sample(WALL + 30.0, activator_id="a2")]}
    async with served.session.post(served.url + "/v1/stats", json=body) as resp:
        assert resp.status == 200
        assert await resp.json() == {"accepted": 2}
    # The first is half a second old (500.2 here); the second claims to come from the future and
    # counts as now (500.7): both land in second 500 and add up.
    served.scaler.tick()
    status = served.scaler.model_status("m")
    assert status is not None and status["stable"] == 6.0
    assert served.scaler.status()["stale"] is False


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"nope": []}, "samples"),
        ({"samples": [sample(WALL, -1.0)]}, "samples[0].avg_concurrency"),
        ({"samples": [sample(WALL, period_s=0)]}, "period_s"),
        ({"samples": [sample(WALL, model="")]}, "samples[0].model"),
        ({"samples": [sample("yesterday")]}, "samples[0].at"),
        ({"samples": [sample(WALL, requests=float("nan"))]}, "requests"),
    ],
)
async def test_bad_stats_are_rejected_naming_the_field(
    served: Served, body: dict[str, object], fragment: str
) -> None:
    async with served.session.post(served.url + "/v1/stats", json=body) as resp:
        assert resp.status == 400
        assert fragment in (await resp.json())["error"]


async def test_non_json_is_a_400(served: Served) -> None:
    async with served.session.post(served.url + "/v1/stats", data=b"{not json") as resp:
        assert resp.status == 400


async def test_poke_over_http_starts_a_model_at_zero(served: Served) -> None:
    served.backend.on_scale = None
    async with served.session.post(served.url + "/v1/poke", json={"models": ["m", "ghost"]}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"poked": ["m"], "unknown": ["ghost"]}
    for _ in range(100):
        if served.backend.scales_of("m"):
            break
        await asyncio.sleep(0.001)
    assert served.backend.scales_of("m") == [1]


async def test_status_endpoints(served: Served) -> None:
    async with served.session.get(served.url + "/v1/status") as resp:
        assert resp.status == 200
        assert "m" in (await resp.json())["models"]
    async with served.session.get(served.url + "/v1/status/m") as resp:
        assert (await resp.json())["policy"] == "kpa"
    async with served.session.get(served.url + "/v1/status/ghost") as resp:
        assert resp.status == 404


async def test_gate_can_answer_instead_of_the_autoscaler() -> None:
    app = web.Application()
    app.add_routes(stats_routes(lambda _r: web.json_response({"error": "no leader yet"}, status=503)))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/v1/stats", json={"samples": []}) as resp:
                assert resp.status == 503
    finally:
        await runner.cleanup()
