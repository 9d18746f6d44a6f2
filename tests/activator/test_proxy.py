"""The activator against real aiohttp upstream servers on 127.0.0.1, on both data paths.

Every behaviour test runs twice: through the aiohttp app (`build_app`) and through the fast path
(`FastPath`, raw protocols). The sink is a recorder (what the autoscaler would receive); endpoints
are pushed into the activator's table the way a backend pushes them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from activator.app import Activator, build_app
from activator.fastpath import FastPath
from autoscaler.aggregation import StatSample
from autoscaler.backends.base import Endpoint, EndpointSet
from tests.conftest import free_port
from zeroserve.spec import parse_specs

Stack = dict[str, Any]

SPEC = """
kind: ModelService
metadata: {name: m}
spec:
  runtime: {model: iris}
  hosts: [m.example.com]
  queue: {maxQueued: 3, timeout: 2s, maxBodySize: 1Mi}
---
kind: ModelService
metadata: {name: llm}
spec:
  runtime: {model: tiny-llm}
  scaling: {containerConcurrency: 1}
"""


class RecordingSink:
    def __init__(self) -> None:
        self.pokes: list[str] = []
        self.samples: list[StatSample] = []
        self.poked = asyncio.Event()

    def report(self, samples: list[StatSample]) -> None:
        self.samples += samples

    def poke(self, model: str) -> None:
        self.pokes.append(model)
        self.poked.set()


class Upstream:
    """A real replica stand-in with knobs for the fault tests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.release_stream = asyncio.Event()
        self.slow_s = 0.0
        self.reset = False
        self.cancelled = 0
        self.started = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/sse", self.sse)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.StreamResponse:
        if self.reset:
            assert request.transport is not None
            request.transport.close()  # refused before any response byte
            raise asyncio.CancelledError
        self.hits += 1
        self.started.set()
        body = await request.read()
        if self.slow_s:
            try:
                await asyncio.sleep(self.slow_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return web.json_response({"replica": self.name, "path": request.path_qs,
                                  "body": body.decode(errors="replace"),
                                  "host": request.headers.get("X-Forwarded-Host")})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 0\n\n")
        # The rest is produced only after the client has seen the first event: a buffering
        # proxy would deadlock here and the test would time out.
        await asyncio.wait_for(self.release_stream.wait(), 10)
        for i in range(1, 1000):
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _serve(app: web.Application, **kw: object) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, **kw)  # type: ignore[arg-type]
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture(params=["aiohttp", "fast"])
async def stack(request: pytest.FixtureRequest,
                registry: CollectorRegistry) -> AsyncIterator[dict[str, object]]:
    ups = [Upstream("a"), Upstream("b")]
    runners = []
    ports = []
    for u in ups:
        r, p = await _serve(u.app(), handler_cancellation=True)
        runners.append(r)
        ports.append(p)
    sink = RecordingSink()
    activator = Activator(parse_specs(SPEC), sink, registry=registry, upstream_timeout_s=1.0,
                          report_period_s=0.05)
    fast: FastPath | None = None
    if request.param == "fast":
        fast = FastPath(activator)
        port = free_port()
        await fast.start("127.0.0.1", port)
    else:
        runner, port = await _serve(build_app(activator), handler_cancellation=True)
    session = aiohttp.ClientSession(f"http://127.0.0.1:{port}")
    eps = [Endpoint(f"r{i}", "127.0.0.1", p) for i, p in enumerate(ports)]
    yield {"activator": activator, "sink": sink, "client": session, "ups": ups, "eps": eps,
           "port": port}
    await session.close()
    if fast is not None:
        await fast.close()
    else:
        await runner.cleanup()
    for r in runners:
        await r.cleanup()


async def until(check: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    """Poll a condition with a generous deadline: a fixed sleep is a guess that a loaded machine
    loses."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.01)


def _warm(stack: dict[str, object], model: str = "m", n: int = 1) -> None:
    act = stack["activator"]
    assert isinstance(act, Activator)
    eps = stack["eps"]
    assert isinstance(eps, list)
    act.table.update(model, EndpointSet(model, tuple(eps[:n]), version=len(act.table.sets) + 1))


async def test_warm_request_is_forwarded(stack: Stack) -> None:
    _warm(stack)
    async with stack["client"].post("/v1/models/m:predict?x=1", data=b'{"instances": [1]}') as r:
        assert r.status == 200
        body = await r.json()
        assert "X-Zeroserve-Cold-Start" not in r.headers
    assert body["path"] == "/v1/models/m:predict?x=1"
    assert body["body"] == '{"instances": [1]}'
    assert stack["sink"].pokes == []


async def test_cold_request_waits_pokes_and_is_marked(stack: Stack) -> None:
    client = stack["client"]
    task = asyncio.create_task(client.get("/v2/models/m/ready"))
    await asyncio.wait_for(stack["sink"].poked.wait(), 10)
    assert stack["sink"].pokes == ["m"]
    assert stack["activator"].gates["m"].queued == 1
    await asyncio.sleep(0.1)
    _warm(stack)
    resp = await asyncio.wait_for(task, 2)
    assert resp.status == 200
    assert resp.headers["X-Zeroserve-Cold-Start"] == "true"
    assert "queue;dur=" in resp.headers["Server-Timing"]
    resp.release()


async def test_unknown_model_is_404_json_in_protocol_shape(stack: Stack) -> None:
    async with stack["client"].post("/v2/models/nope/infer", json={}) as r:
        assert r.status == 404
        assert "nope" in (await r.json())["error"]
    async with stack["client"].post("/v1/completions", json={"model": "nope", "prompt": "x"}) as r:
        assert r.status == 404
        err = (await r.json())["error"]
        assert err["code"] == "model_not_found" and "nope" in err["message"]


async def test_openai_body_and_host_routing(stack: Stack) -> None:
    _warm(stack, "llm")
    _warm(stack, "m")
    async with stack["client"].post("/v1/completions",
                                    json={"model": "llm", "prompt": "hi"}) as r:
        assert r.status == 200
        assert json.loads((await r.json())["body"])["prompt"] == "hi"
    async with stack["client"].post("/predict", data=b"{}",
                                    headers={"Host": "m.example.com"}) as r:
        assert r.status == 200
        assert (await r.json())["host"] == "m.example.com"
    async with stack["client"].post("/v1/completions", data=b"not json") as r:
        assert r.status == 400
    async with stack["client"].get("/v1/models") as r:
        ids = [m["id"] for m in (await r.json())["data"]]
        assert ids == ["llm", "m"]


async def test_queue_full_and_timeout_are_503_with_retry_after(stack: Stack) -> None:
    client = stack["client"]
    waiting = [asyncio.create_task(client.get("/v2/models/m/ready")) for _ in range(3)]
    await until(lambda: stack["activator"].gates["m"].queued == 3, "3 requests queued")
    async with client.get("/v2/models/m/ready") as r:
        assert r.status == 503
        assert "Retry-After" in r.headers
        assert "queue full" in (await r.json())["error"]
    done = await asyncio.gather(*waiting)
    for r in done:  # the 2 s queue timeout passed with no replica
        assert r.status == 503 and "Retry-After" in r.headers
        r.release()
    assert stack["activator"].gates["m"].queued == 0


async def test_client_disconnect_while_queued_dequeues(stack: Stack) -> None:
    task = asyncio.create_task(stack["client"].get("/v2/models/m/ready"))
    await asyncio.wait_for(stack["sink"].poked.wait(), 10)
    assert stack["activator"].gates["m"].queued == 1
    task.cancel()
    await until(lambda: stack["activator"].gates["m"].queued == 0, "the queue to empty")


async def test_client_disconnect_cancels_upstream_request(stack: Stack) -> None:
    up = stack["ups"][0]
    up.slow_s = 5
    _warm(stack)
    task = asyncio.create_task(stack["client"].post("/v1/models/m:predict", data=b"{}"))
    await asyncio.wait_for(up.started.wait(), 10)
    task.cancel()
    await until(lambda: up.cancelled, "the upstream handler to be cancelled")
    assert up.cancelled == 1


async def test_refused_replica_is_retried_on_another(stack: Stack) -> None:
    stack["ups"][0].reset = True
    _warm(stack, n=2)
    for _ in range(6):  # p2c picks either; every request must land on "b"
        async with stack["client"].post("/v1/models/m:predict", data=b"{}") as r:
            assert r.status == 200
            assert (await r.json())["replica"] == "b"


async def test_refused_only_replica_gives_502_after_retry_waits(stack: Stack) -> None:
    stack["ups"][0].reset = True
    _warm(stack, n=1)
    task = asyncio.create_task(stack["client"].post("/v1/models/m:predict", data=b"{}"))
    # The failed replica is out of rotation; the retry waits (queued) and pokes for another.
    await asyncio.wait_for(stack["sink"].poked.wait(), 10)
    assert "m" in stack["sink"].pokes
    assert not task.done()
    stack["ups"][0].reset = False
    _warm(stack, n=1)
    resp = await asyncio.wait_for(task, 3)
    assert resp.status == 200
    resp.release()


async def test_slow_replica_gives_504(stack: Stack) -> None:
    stack["ups"][0].slow_s = 3
    _warm(stack)
    async with stack["client"].post("/v1/models/m:predict", data=b"{}") as r:
        assert r.status == 504


async def test_body_over_limit_is_413(stack: Stack) -> None:
    _warm(stack)
    async with stack["client"].post("/v1/models/m:predict", data=b"x" * (2 << 20)) as r:
        assert r.status == 413


async def test_sse_stream_is_not_buffered(stack: Stack) -> None:
    up = stack["ups"][0]
    _warm(stack)
    events = 0
    async with stack["client"].get("/sse", headers={"Host": "m.example.com"}) as r:
        assert r.status == 200
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
        assert first == b"data: 0\n\n"
        up.release_stream.set()
        async for line in r.content:
            if line.startswith(b"data:"):
                events += 1
    assert events == 1000  # 1..999 and [DONE]


async def test_load_is_reported_time_weighted(stack: Stack) -> None:
    up = stack["ups"][0]
    up.slow_s = 0.3
    _warm(stack)
    took: list[float] = []

    async def timed() -> None:
        start = time.monotonic()
        async with stack["client"].post("/v1/models/m:predict", data=b"{}") as r:
            await r.read()
        took.append(time.monotonic() - start)

    await asyncio.gather(*[timed() for _ in range(4)])

    def reported() -> list[StatSample]:
        return [s for s in stack["sink"].samples if s.model == "m"]

    # Every request counted, and a whole idle period reported after the last one left: only then
    # has all of their time in flight reached the sink (a fixed sleep may wake before that).
    await until(lambda: sum(s.requests for s in reported()) == 4 and reported()[-1].avg_concurrency == 0,
                "the load of all 4 requests to be reported")
    samples = reported()
    assert sum(s.requests for s in samples) == 4
    busy = [s.avg_concurrency for s in samples if s.avg_concurrency > 0]
    assert busy and max(busy) <= 4.0 + 1e-9
    # Integral of concurrency over time equals the 4 requests' time in flight: at least the
    # replica's 0.3 s each, at most what each took as the client saw it. (A fixed ceiling such as
    # 2.0 s failed whenever a loaded machine stalled the process while they were in flight.)
    area = sum(s.avg_concurrency * s.period_s for s in samples)
    assert 4 * 0.3 * 0.95 < area <= sum(took) + 0.01, (area, took)
