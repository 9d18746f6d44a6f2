"""Fault behaviours of the fast path, against real upstreams: aiohttp servers, raw asyncio servers
and a subprocess replica killed with SIGKILL. Clients are aiohttp or a raw socket where the test
needs bytes on the wire (pipelining, chunked bodies, disconnects)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from activator.app import Activator
from activator.fastpath import FastPath
from activator.metrics import ActivatorMetrics
from activator.tally import Tally
from autoscaler.backends.base import Endpoint, EndpointSet
from tests.activator.test_proxy import RecordingSink, Upstream, _serve, until
from tests.conftest import free_port
from zeroserve.spec import parse_specs

SPEC = """
kind: ModelService
metadata: {name: m}
spec:
  runtime: {model: iris}
  queue: {maxQueued: 4, timeout: 3s, maxBodySize: 8Mi}
---
kind: ModelService
metadata: {name: one}
spec:
  runtime: {model: iris}
  scaling: {containerConcurrency: 1}
"""

# A replica as its own process, so it can die for real. /hang never answers; /partial sends half
# a response and stalls; anything else gets a small 200.
REPLICA = r"""
import asyncio, sys
async def handle(reader, writer):
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1]
        print(path.decode(), flush=True)
        if path == b"/hang":
            await asyncio.sleep(3600)
        if path == b"/partial":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            await asyncio.sleep(3600)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nsub")
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


class Stack:
    def __init__(self, activator: Activator, fast: FastPath, port: int, ups: list[Upstream],
                 eps: list[Endpoint], sink: RecordingSink) -> None:
        self.activator = activator
        self.fast = fast
        self.port = port
        self.ups = ups
        self.eps = eps
        self.sink = sink
        self.url = f"http://127.0.0.1:{port}"

    def publish(self, model: str, eps: list[Endpoint]) -> None:
        version = self.activator.table.get(model).version + 1
        self.activator.table.update(model, EndpointSet(model, tuple(eps), version=version))

    async def raw(self, data: bytes, timeout_s: float = 5.0) -> bytes:
        """Send bytes, read until the activator closes the connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(data)
        try:
            return await asyncio.wait_for(reader.read(), timeout_s)
        finally:
            writer.close()

    def count(self, model: str, code: str) -> float:
        self.fast.flush_metrics()
        value = self.activator.metrics.requests.labels(model, code)._value.get()
        return float(value)


@pytest.fixture
async def stack(registry: CollectorRegistry) -> AsyncIterator[Stack]:
    ups = [Upstream("a"), Upstream("b")]
    runners = []
    eps = []
    for i, u in enumerate(ups):
        r, p = await _serve(u.app(), handler_cancellation=True)
        runners.append(r)
        eps.append(Endpoint(f"r{i}", "127.0.0.1", p))
    sink = RecordingSink()
    activator = Activator(parse_specs(SPEC), sink, registry=registry, upstream_timeout_s=2.0,
                          report_period_s=0.05)
    fast = FastPath(activator)
    port = free_port()
    await fast.start("127.0.0.1", port)
    yield Stack(activator, fast, port, ups, eps, sink)
    await fast.close()
    for r in runners:
        await r.cleanup()


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[str], Endpoint]]:
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)],  # noqa: ASYNC220
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert await asyncio.to_thread(proc.stdout.readline) == "ready\n"
    yield proc, Endpoint("sub", "127.0.0.1", port)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each Content-Length response in a byte stream."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


async def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    stack.publish("m", stack.eps)
    reqs = (b"GET /v1/models/m?i=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /v1/models/m:predict?i=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /v2/models/nope/infer HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v1/models/m?i=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = _responses(await stack.raw(reqs))
    assert [status for status, _ in answers] == [200, 200, 404, 200]
    assert json.loads(answers[0][1])["path"] == "/v1/models/m?i=0"
    assert json.loads(answers[1][1])["body"] == "hello"
    assert b"nope" in answers[2][1]
    assert json.loads(answers[3][1])["path"] == "/v1/models/m?i=3"


async def test_chunked_request_body_is_forwarded(stack: Stack) -> None:
    stack.publish("m", stack.eps[:1])
    req = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    [(status, body)] = _responses(await stack.raw(req))
    assert status == 200
    assert json.loads(body)["body"] == "hello world"


async def test_large_body_streams_through(stack: Stack) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/{tail:.*}", echo)
    runner, port = await _serve(app)
    stack.publish("m", [Endpoint("big", "127.0.0.1", port)])
    data = bytes(range(97, 123)) * (3 * 1024 * 1024 // 26)   # ~3 MiB, past the retry buffer
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{stack.url}/v1/models/m:predict", data=data) as r:
            assert r.status == 200
            assert await r.read() == data

        async def chunks() -> AsyncIterator[bytes]:   # no Content-Length: sent chunked
            for i in range(0, len(data), 100_000):
                yield data[i:i + 100_000]

        async with client.post(f"{stack.url}/v1/models/m:predict", data=chunks()) as r:
            assert r.status == 200
            assert await r.read() == data
    await runner.cleanup()


async def test_refused_port_is_retried_on_another_replica(stack: Stack) -> None:
    dead = Endpoint("dead", "127.0.0.1", free_port())   # nothing listens there
    stack.publish("one", [dead, stack.eps[1]])          # capacity 1: the dead one is picked first
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.post(f"{stack.url}/v1/models/one:predict", data=b"{}") as r:
                assert r.status == 200
                assert (await r.json())["replica"] == "b"
    gate = stack.activator.gates["one"]
    assert [r.url for r in gate.replicas] == [stack.eps[1].url]
    assert stack.activator.metrics.retries.labels("one")._value.get() == 1


async def test_replica_killed_before_answering_is_retried(
        stack: Stack, replica: tuple[subprocess.Popen[str], Endpoint]) -> None:
    proc, ep = replica
    stack.publish("one", [ep, stack.eps[1]])
    async with aiohttp.ClientSession() as client:
        task = asyncio.create_task(client.get(f"{stack.url}/hang", headers={"Host": "one.default"}))
        assert proc.stdout is not None
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "/hang"
        proc.send_signal(signal.SIGKILL)
        resp = await asyncio.wait_for(task, 5)
        assert resp.status == 200
        assert (await resp.json())["replica"] == "b"
        resp.release()
    assert stack.activator.tracker.models["one"].inflight == 0


async def test_replica_killed_mid_response_cuts_the_stream_and_the_activator_survives(
        stack: Stack, replica: tuple[subprocess.Popen[str], Endpoint]) -> None:
    proc, ep = replica
    stack.publish("one", [ep])
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{stack.url}/partial", headers={"Host": "one.default"}) as r:
            assert r.status == 200
            assert await r.content.readexactly(10) == b"x" * 10
            proc.send_signal(signal.SIGKILL)
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(r.read(), 5)
        stack.publish("one", [stack.eps[0]])
        async with client.get(f"{stack.url}/after", headers={"Host": "one.default"}) as r:
            assert r.status == 200
    gate = stack.activator.gates["one"]
    assert stack.activator.tracker.models["one"].inflight == 0
    assert all(r.inflight == 0 for r in gate.replicas)


async def test_client_disconnect_while_queued_frees_its_place(stack: Stack) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"GET /v2/models/m/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(stack.sink.poked.wait(), 10)
    gate = stack.activator.gates["m"]
    assert gate.queued == 1
    writer.close()
    await until(lambda: gate.queued == 0, "the queue to empty")
    assert stack.activator.tracker.models["m"].inflight == 0
    assert stack.count("m", "499") == 1
    # The slot it would have had goes to the next request, not to the ghost.
    stack.publish("m", stack.eps[:1])
    async with aiohttp.ClientSession() as client, client.get(f"{stack.url}/v2/models/m/ready") as r:
        assert r.status == 200


async def test_stale_pooled_connection_is_not_blamed_on_the_replica(stack: Stack) -> None:
    # Answers the first request on each connection, then closes on the next one unanswered: the
    # race of a keep-alive connection the replica times out just as we reuse it.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stack.publish("m", [Endpoint("x", "127.0.0.1", port)])
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(f"{stack.url}/v2/models/m/ready") as r:
                assert r.status == 200
                assert await r.read() == b"ok"
    assert len(stack.activator.gates["m"].replicas) == 1
    assert stack.activator.metrics.retries.labels("m")._value.get() == 0
    server.close()
    await server.wait_closed()


async def test_slow_replica_gives_504_and_frees_the_slot(stack: Stack) -> None:
    stack.ups[0].slow_s = 5
    stack.publish("one", stack.eps[:1])
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{stack.url}/v1/models/one:predict", data=b"{}") as r:
            assert r.status == 504
        stack.ups[0].slow_s = 0
        async with client.post(f"{stack.url}/v1/models/one:predict", data=b"{}") as r:
            assert r.status == 200
    assert stack.count("one", "504") == 1


async def test_head_then_get_on_one_connection(stack: Stack) -> None:
    stack.publish("m", stack.eps[:1])
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.head(f"{stack.url}/v1/models/m") as r:
            assert r.status == 200
        async with client.get(f"{stack.url}/v1/models/m") as r:
            assert r.status == 200
            assert (await r.json())["replica"] == "a"


async def test_expect_continue(stack: Stack) -> None:
    stack.publish("m", stack.eps[:1])
    async with aiohttp.ClientSession() as client, \
            client.post(f"{stack.url}/v1/models/m:predict", data=b"abc", expect100=True) as r:
        assert r.status == 200
        assert (await r.json())["body"] == "abc"


async def test_drain_refuses_new_requests_and_finishes_those_in_flight(stack: Stack) -> None:
    stack.ups[0].slow_s = 0.4
    stack.publish("m", stack.eps[:1])
    async with aiohttp.ClientSession() as client:
        first = asyncio.create_task(client.post(f"{stack.url}/v1/models/m:predict", data=b"{}"))
        await asyncio.wait_for(stack.ups[0].started.wait(), 10)
        drain = asyncio.create_task(stack.fast.drain(5))
        await asyncio.sleep(0.05)
        async with client.get(f"{stack.url}/healthz") as r:
            assert r.status == 503
        async with client.post(f"{stack.url}/v1/models/m:predict", data=b"{}") as r:
            assert r.status == 503 and "Retry-After" in r.headers
        resp = await asyncio.wait_for(first, 3)
        assert resp.status == 200
        resp.release()
        await asyncio.wait_for(drain, 3)


async def test_metrics_and_load_are_counted(stack: Stack) -> None:
    stack.publish("m", stack.eps[:1])
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.get(f"{stack.url}/v2/models/m/ready") as r:
                assert r.status == 200
        async with client.get(f"{stack.url}/v2/models/zz/ready") as r:
            assert r.status == 404
    assert stack.count("m", "200") == 3
    assert stack.count("zz", "404") == 1
    # The requests reach the sink with the next periodic report (every 50 ms, later when the
    # machine is loaded): poll for it instead of sleeping a guess.
    await until(lambda: sum(s.requests for s in stack.sink.samples if s.model == "m") >= 3,
                "the 3 requests to be reported")
    assert sum(s.requests for s in stack.sink.samples if s.model == "m") == 3


async def test_upstream_response_is_passed_through_verbatim(stack: Stack) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Odd": "a,b", "Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner, port = await _serve(app)
    stack.publish("m", [Endpoint("c", "127.0.0.1", port)])
    raw = await stack.raw(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked\r\n" in raw and b"X-Odd: a,b\r\n" in raw
    assert raw.endswith(b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n")
    await runner.cleanup()


async def test_slow_client_pauses_the_replica_instead_of_buffering(stack: Stack) -> None:
    total = 64 << 20
    sent = 0

    async def firehose(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        block = b"z" * (1 << 20)
        for _ in range(total >> 20):
            await resp.write(block)   # waits while the activator stops reading
            sent += len(block)
        return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", firehose)
    runner, port = await _serve(app)
    stack.publish("m", [Endpoint("f", "127.0.0.1", port)])
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port, limit=1 << 16)
    writer.write(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readexactly(1 << 16)
    await asyncio.sleep(0.5)   # the client reads nothing for a while
    (client,) = stack.fast.clients
    assert client.transport is not None
    buffered = client.transport.get_write_buffer_size()
    assert sent < 16 << 20, f"the replica got {sent} bytes out while the client read 64 KiB"
    assert buffered < 8 << 20
    got = 1 << 16
    while got < total:   # and the whole stream still arrives once the client reads
        got += len(await asyncio.wait_for(reader.read(1 << 20), 5))
    assert got >= total
    writer.close()
    await runner.cleanup()


async def test_response_delimited_by_close_reaches_the_client_whole(stack: Stack) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"ends at EOF")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stack.publish("m", [Endpoint("x", "127.0.0.1", server.sockets[0].getsockname()[1])])
    raw = await stack.raw(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.endswith(b"\r\n\r\nno length, ends at EOF")
    assert stack.activator.tracker.models["m"].inflight == 0
    async with aiohttp.ClientSession() as client:   # and the next request still goes through
        for _ in range(2):
            async with client.get(f"{stack.url}/v1/models/m") as r:
                assert await r.read() == b"no length, ends at EOF"
    server.close()
    await server.wait_closed()


def test_tally_flushes_the_same_series_as_direct_observation() -> None:
    direct, tallied = CollectorRegistry(), CollectorRegistry()
    a, b = ActivatorMetrics(direct), ActivatorMetrics(tallied)
    tally = Tally(b.requests, b.duration)
    values = [0.0005, 0.001, 0.0011, 0.003, 0.2, 0.25, 7.0, 900.0]   # edges, middle, past +Inf
    for i, v in enumerate(values):
        code = "200" if i % 3 else "503"
        a.requests.labels("m", code).inc()
        a.duration.labels("m").observe(v)
        tally.count("m", code)
        tally.observe("m", v)
    tally.flush()
    tally.flush()   # a second flush adds nothing

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for metric in registry.collect() for s in metric.samples
                if not s.name.endswith("_created")}

    assert samples(tallied) == pytest.approx(samples(direct))
    assert samples(direct)[("zeroserve_request_duration_seconds_count", (("model", "m"),))] == 8


async def test_local_endpoints_answer_head_without_a_body(stack: Stack) -> None:
    raw = await stack.raw(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 16" in head
    assert rest.startswith(b"HTTP/1.1 200")          # no body bytes between the two responses
    assert rest.endswith(b'{"status": "ok"}')


async def test_a_draining_replicas_503_is_retried_on_another(stack: Stack) -> None:
    # As a replica that got SIGTERM answers: 503 and Connection: close.
    async def draining(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                     b"Content-Length: 8\r\n\r\ndraining")
        writer.close()

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")   # a 503 on a kept connection is an answer
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (draining, busy)]
    eps = [Endpoint(f"s{i}", "127.0.0.1", s.sockets[0].getsockname()[1]) for i, s in enumerate(servers)]
    stack.publish("one", [eps[0], stack.eps[1]])
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{stack.url}/v1/models/one:predict", data=b"{}") as r:
            assert r.status == 200
            assert (await r.json())["replica"] == "b"
        assert [r.url for r in stack.activator.gates["one"].replicas] == [stack.eps[1].url]
        stack.publish("one", [eps[1], stack.eps[1]])
        async with client.post(f"{stack.url}/v1/models/one:predict", data=b"{}") as r:
            assert r.status == 503
            assert await r.read() == b"busy"
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_static_workers_share_a_port_and_stop_on_sigterm(stack: Stack) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "activator.fastpath", "--static", f"m={stack.eps[0].url}",
           "--port", str(port), "--workers", "2", "--drain", "1"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                start_new_session=True)
    assert proc.stdout is not None
    try:
        pids: set[bytes] = set()
        seen = b""
        deadline = asyncio.get_running_loop().time() + 60  # 10-15 s when overloaded
        while len(pids) < 2:   # each worker says which pid serves the port
            try:
                async with asyncio.timeout_at(deadline):
                    line = await proc.stdout.readline()
            except TimeoutError:
                raise AssertionError(f"{len(pids)} of 2 workers announced in 60 s: {seen!r}") from None
            seen += line
            assert line, f"the workers' output ended (exit {proc.returncode}) after: {seen!r}"
            if m := re.search(rb"pid=(\d+)", line):
                pids.add(m.group(1))
        async with aiohttp.ClientSession() as client:
            for _ in range(4):
                async with client.get(f"http://127.0.0.1:{port}/v1/models/m?x=1") as r:
                    assert r.status == 200
                    assert (await r.json())["path"] == "/v1/models/m?x=1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0  # 1 s drain, then exit
    finally:
        if proc.returncode is None:  # a failed check must not leave the workers serving
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_malformed_oversized_and_slow_request_heads_are_refused(stack: Stack) -> None:
    stack.publish("m", stack.eps[:1])
    big = b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    with contextlib.suppress(ConnectionError):
        for i in range(0, len(big), 16384):   # as a client streaming a header that never ends
            writer.write(big[i:i + 16384])
            await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")

    assert (await stack.raw(b"BLAH\x00 / HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400 ")

    stack.fast.client_head_timeout_s = 0.3
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n")   # and then nothing
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    async with aiohttp.ClientSession() as client, client.get(f"{stack.url}/v1/models/m") as r:
        assert r.status == 200   # a normal request on a fresh connection is unaffected
