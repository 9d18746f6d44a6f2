"""The request-head limit on both data paths, from a raw socket against a real activator.

A head over MAX_HEAD_BYTES gets 431 from the activator whether it arrives in one read or many,
and neither reaches the replica (an aiohttp server that accepts long lines, counting hits) nor
cold-starts a model without replicas (the sink records no poke). A head of exactly the limit
goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from activator.app import Activator, build_app
from activator.fastpath import FastPath
from activator.http1_limits import AIOHTTP_HANDLER_ARGS, MAX_HEAD_BYTES
from autoscaler.backends.base import Endpoint, EndpointSet
from tests.activator.test_proxy import RecordingSink, Upstream, _serve, until
from tests.conftest import free_port
from zeroserve.spec import parse_specs

Stack = dict[str, Any]

SPEC = """
kind: ModelService
metadata: {name: m}
spec:
  runtime: {model: iris}
---
kind: ModelService
metadata: {name: cold}
spec:
  runtime: {model: iris}
  queue: {timeout: 2s}
"""


@pytest.fixture(params=["fast", "aiohttp"])
async def stack(request: pytest.FixtureRequest,
                registry: CollectorRegistry) -> AsyncIterator[Stack]:
    upstream = Upstream("a")
    # The replica takes lines as long as the activator forwards (its own default is 8190 bytes).
    up_runner, up_port = await _serve(upstream.app(), **AIOHTTP_HANDLER_ARGS)
    sink = RecordingSink()
    activator = Activator(parse_specs(SPEC), sink, registry=registry, upstream_timeout_s=2.0,
                          report_period_s=0.05)
    activator.table.update("m", EndpointSet("m", (Endpoint("r0", "127.0.0.1", up_port),),
                                            version=1))
    fast: FastPath | None = None
    if request.param == "fast":
        fast = FastPath(activator)
        port = free_port()
        await fast.start("127.0.0.1", port)
    else:
        runner, port = await _serve(build_app(activator), handler_cancellation=True)
    yield {"path": request.param, "port": port, "upstream": upstream, "sink": sink}
    if fast is not None:
        await fast.close()
    else:
        await runner.cleanup()
    await up_runner.cleanup()


def request_head(total_bytes: int, model: str = "m", pad_bytes: int = 16 * 1024,
                 pad_name: str = "X-Pad-{n}") -> bytes:
    """A GET head of exactly `total_bytes` (asking to close after the answer), padded with
    headers named `pad_name` of at most pad_bytes."""
    head = f"GET /v1/models/{model} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    left = total_bytes - len(head) - 2
    n = 0
    while left > 0:
        line = (pad_name.format(n=n) + ": ").encode()
        size = min(pad_bytes, left - len(line) - 2)
        if size < 1:   # too little room for another header: widen the previous one instead
            head = head[:-2] + b"p" * left + b"\r\n"
            break
        head += line + b"p" * size + b"\r\n"
        left -= len(line) + size + 2
        n += 1
    head += b"\r\n"
    assert len(head) == total_bytes
    return head


async def send(port: int, data: bytes, *, pieces: int = 1, pause_s: float = 0.0) -> bytes:
    """Write `data` in `pieces` (with a pause between, so they arrive as separate reads), then
    read the answer until the activator closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = -(-len(data) // pieces)
    with contextlib.suppress(ConnectionError):   # the activator may refuse before the last piece
        for i in range(0, len(data), step):
            writer.write(data[i:i + step])
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


async def test_a_head_of_exactly_the_limit_reaches_the_replica(stack: Stack) -> None:
    assert status(await send(stack["port"], request_head(MAX_HEAD_BYTES))) == 200
    assert stack["upstream"].hits == 1


@pytest.mark.parametrize("size", [MAX_HEAD_BYTES + 1, 66_000, 100_000])
async def test_an_oversized_head_in_one_read_gets_431_and_reaches_no_replica(
        stack: Stack, size: int) -> None:
    assert status(await send(stack["port"], request_head(size))) == 431
    assert stack["upstream"].hits == 0


@pytest.mark.parametrize("pieces", [2, 13])
async def test_an_oversized_head_in_many_reads_gets_431_and_reaches_no_replica(
        stack: Stack, pieces: int) -> None:
    answer = await send(stack["port"], request_head(100_000), pieces=pieces, pause_s=0.02)
    assert status(answer) == 431
    assert stack["upstream"].hits == 0


@pytest.mark.parametrize("pad_bytes", [16 * 1024, 100_000])
async def test_an_unfinished_oversized_head_gets_431_without_waiting_for_its_end(
        stack: Stack, pad_bytes: int) -> None:
    """The client writes 100 KB of head in one go and then waits: refused now, not at the 60 s
    head timeout."""
    if stack["path"] == "aiohttp" and pad_bytes < MAX_HEAD_BYTES:
        pytest.skip("aiohttp's parser bounds each line, not a head still arriving")
    reader, writer = await asyncio.open_connection("127.0.0.1", stack["port"])
    writer.write(request_head(100_000, pad_bytes=pad_bytes)[:-2])   # no blank line: unfinished
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    # aiohttp's parser refuses a line past its limit itself (400); the fast path says 431.
    assert status(answer) == (431 if stack["path"] == "fast" else 400)
    assert stack["upstream"].hits == 0


async def test_headers_the_activator_drops_count_toward_the_limit(stack: Stack) -> None:
    """Hop-by-hop headers are not forwarded, but they are part of what the client sent."""
    assert status(await send(stack["port"], request_head(70_000, pad_name="Keep-Alive"))) == 431
    assert status(await send(stack["port"], request_head(2000, pad_name="Keep-Alive"))) == 200
    assert stack["upstream"].hits == 1


async def test_an_oversized_head_does_not_cold_start_the_model(stack: Stack) -> None:
    sink = stack["sink"]
    assert status(await send(stack["port"], request_head(100_000, model="cold"))) == 431
    assert status(await send(stack["port"], request_head(70_000, model="cold"), pieces=4,
                             pause_s=0.02)) == 431
    assert sink.pokes == []
    # The same request with a small head does ask for a replica: the check above can fail.
    _, writer = await asyncio.open_connection("127.0.0.1", stack["port"])
    writer.write(request_head(200, model="cold"))
    await until(lambda: sink.pokes == ["cold"], "a poke for the cold model")
    writer.close()


async def test_one_line_over_the_limit_is_refused_cleanly(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    answer = await send(stack["port"], request_head(100_000, pad_bytes=100_000), pieces=3,
                        pause_s=0.02)
    # aiohttp's parser refuses a line past its limit itself (400); the fast path says 431.
    assert status(answer) == (431 if stack["path"] == "fast" else 400)
    assert stack["upstream"].hits == 0
    assert not [r for r in caplog.records if r.exc_info], "a refused head logged a traceback"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # And the activator still serves.
    assert status(await send(stack["port"], request_head(300))) == 200


async def test_a_body_before_a_split_head_is_not_counted_as_head(stack: Stack) -> None:
    """A pipelined POST's 200 KB body and the next request's head can share a read; the body's
    bytes are not the head's (counting them refused a good request with 431)."""
    body = b"b" * 200_000
    post = (b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body
    nxt = b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", stack["port"])
    writer.write(post + nxt)
    await writer.drain()
    await asyncio.sleep(0.2)   # the rest of the second head comes in a later read
    writer.write(b"Connection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d+) ", answer) == [b"200", b"200"]
    await until(lambda: stack["upstream"].hits == 2, "both requests at the replica")
