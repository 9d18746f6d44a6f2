"""A client that goes away mid-body is normal: a real `zeroserve serve` logs one line, no
traceback, counts the request as 499 and serves the next one.

The client is a raw socket that announces a 2 MB body (or a chunked one), sends part of it and
closes: straight to the replica, or through the activator's fast path, which drops the upstream
request when its client goes away and cuts off a body over the model's size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from runtime_server_proc import REPO, ServerProcess, start_server

from activator.app import Activator
from activator.fastpath import FastPath
from autoscaler.backends.base import Endpoint, EndpointSet
from tests.activator.test_proxy import RecordingSink
from tests.conftest import free_port
from zeroserve.spec import parse_specs

BODY_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("abort"), "--model", "iris", "--model-dir", str(REPO / "examples" / "iris")
    )
    yield server
    assert server.stop() == 0


@pytest.fixture
async def activator_port(iris: ServerProcess, registry: CollectorRegistry) -> AsyncIterator[int]:
    """The activator's fast path in front of the replica; bodies over 1 MiB are cut off."""
    spec = "kind: ModelService\nmetadata: {name: iris}\nspec:\n  runtime: {model: iris}\n" \
        "  queue: {maxBodySize: 1Mi}\n"
    activator = Activator(parse_specs(spec), RecordingSink(), registry=registry)
    activator.table.update("iris", EndpointSet("iris", (Endpoint("r0", "127.0.0.1", iris.port),),
                                               version=1))
    fast = FastPath(activator)
    port = free_port()
    await fast.start("127.0.0.1", port, report_load=False)
    yield port
    await fast.close()


async def abort_upload(port: int, *pieces: bytes) -> bytes:
    """Send the pieces (a head and part of its body), 0.2 s apart, and close; returns what the
    server had answered by then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.2)   # the server is now inside its body read
    answer = b""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        answer = await asyncio.wait_for(reader.read(1024), 0.05)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return answer


async def wait_for_log(server: ServerProcess, text: str, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.log().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged {count} times:\n{server.log()}"
        await asyncio.sleep(0.02)


UPLOADS = {
    "content-length": (
        b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % BODY_BYTES,
        b'{"instances": [' + b" " * (BODY_BYTES // 2),
    ),
    "chunked": (
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"%x\r\n%s\r\n" % (BODY_BYTES // 2, b" " * (BODY_BYTES // 2)),
    ),
}


async def assert_one_line_and_serving(iris: ServerProcess, before: int) -> None:
    await wait_for_log(iris, "client went away mid-body", before + 1)
    log = iris.log()
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log
    async with aiohttp.ClientSession() as s:
        async with s.post(
            iris.url + "/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
        ) as r:
            assert (r.status, await r.json()) == (200, {"predictions": [0]})
        async with s.get(iris.url + "/metrics") as r:
            metrics = await r.text()
    assert 'code="499"' in metrics


@pytest.mark.parametrize("framing", list(UPLOADS))
async def test_client_gone_mid_body_is_one_log_line_and_the_server_goes_on(
    iris: ServerProcess, framing: str
) -> None:
    before = iris.log().count("client went away mid-body")
    head, partial = UPLOADS[framing]
    await abort_upload(iris.port, head + partial)
    await assert_one_line_and_serving(iris, before)


async def test_client_gone_mid_body_through_the_activator(iris: ServerProcess, activator_port: int) -> None:
    before = iris.log().count("client went away mid-body")
    # Under the activator's 1 MiB limit, so the part sent streams through to the replica.
    head = (b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900000\r\n\r\n")
    await abort_upload(activator_port, head + b'{"instances": [', b" " * 300_000)
    await assert_one_line_and_serving(iris, before)


async def test_body_cut_off_by_the_activator(iris: ServerProcess, activator_port: int) -> None:
    before = iris.log().count("client went away mid-body")
    head, partial = UPLOADS["chunked"]
    # The request is out on the replica before the body passes the activator's 1 MiB limit.
    answer = await abort_upload(activator_port, head + b"2\r\n{\"\r\n",
                                partial + b"%x\r\n%s\r\n" % (1000, b" " * 1000))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    await assert_one_line_and_serving(iris, before)
