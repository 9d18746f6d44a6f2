"""The activator's HTTP load reports across an autoscaler outage: nothing dropped, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from activator.discovery import HttpLoadSink
from autoscaler.aggregation import StatSample


class Autoscaler:
    """A real aiohttp server on 127.0.0.1 that answers each path with a status chosen per call."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.status_for: dict[str, int] = {}  # path -> status to answer (200 when absent)

    async def handle(self, request: web.Request) -> web.Response:
        status = self.status_for.get(request.path, 200)
        if status == 200:
            self.received.append((request.path, await request.json()))
        return web.json_response({}, status=status)


@pytest.fixture
async def server() -> AsyncIterator[tuple[Autoscaler, str]]:
    fake = Autoscaler()
    app = web.Application()
    app.router.add_post("/v1/{what}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@contextlib.asynccontextmanager
async def running(url: str) -> AsyncIterator[HttpLoadSink]:
    """An HttpLoadSink to `url`, its send loop running for the body of the block."""
    sink = HttpLoadSink(url, None)
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(sink.run(session))
        try:
            yield sink
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def sample(at: float) -> StatSample:
    return StatSample("iris", "a1", at=at, avg_concurrency=1.0, requests=1.0)


def delivered(fake: Autoscaler) -> list[float]:
    return [s["at"]
            for path, body in fake.received if path == "/v1/stats" for s in body["samples"]]


async def test_samples_reported_during_an_outage_arrive_once_after_it(
        server: tuple[Autoscaler, str]) -> None:
    fake, url = server
    fake.status_for["/v1/stats"] = 503
    async with running(url) as sink:
        for at in (1.0, 2.0, 3.0):
            sink.report([sample(at)])
            await asyncio.sleep(0.05)
        await eventually(lambda: sink.failures >= 2)
        fake.status_for.clear()  # the autoscaler is back
        sink.report([sample(4.0)])
        await eventually(lambda: len(delivered(fake)) == 4)
        await asyncio.sleep(0.3)  # time for a duplicate to show up, were one sent
    offset = sink._offset_s
    assert [round(at - offset, 6) for at in delivered(fake)] == [1.0, 2.0, 3.0, 4.0]


async def test_a_failed_poke_is_retried_without_resending_the_samples(
        server: tuple[Autoscaler, str]) -> None:
    fake, url = server
    fake.status_for["/v1/poke"] = 503
    async with running(url) as sink:
        sink.report([sample(1.0)])
        sink.poke("iris")
        await eventually(lambda: sink.failures >= 1)
        fake.status_for.clear()
        await eventually(lambda: any(path == "/v1/poke" for path, _ in fake.received))
    assert len(delivered(fake)) == 1
    assert [body for path, body in fake.received if path == "/v1/poke"] == [{"models": ["iris"]}]


async def test_a_report_the_autoscaler_refuses_is_dropped_not_resent(
        server: tuple[Autoscaler, str]) -> None:
    fake, url = server
    fake.status_for["/v1/stats"] = 400
    async with running(url) as sink:
        sink.report([sample(1.0)])
        await eventually(lambda: sink.failures == 1)
        fake.status_for.clear()
        sink.report([sample(2.0)])
        await eventually(lambda: len(delivered(fake)) == 1)
    assert [round(at - sink._offset_s, 6) for at in delivered(fake)] == [2.0]
