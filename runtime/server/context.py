"""What every protocol module shares: typed app state and the handler wrapper that admits,
times and error-renders requests."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from runtime.server.errors import BadRequest, PayloadTooLarge, ServerError
from runtime.server.host import ModelHost
from runtime.server.metrics import ServerMetrics

HOST = web.AppKey("host", ModelHost)
METRICS = web.AppKey("metrics", ServerMetrics)

log = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499   # nginx's status for a request whose client went away first

# The server's request-head limits, for web.Application(handler_args=...). aiohttp's defaults
# (8190 bytes a line or header value) refuse heads the activator forwards: it lets heads of up to
# 64 KiB through (activator/http1_limits.py) and adds X-Forwarded-For/-Host, so 1 KiB on top.
HANDLER_ARGS = {"max_line_size": 65 * 1024, "max_field_size": 65 * 1024}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[ServerError], web.Response]


def endpoint(
    protocol: str, render: ErrorRenderer, *, inference: bool = False, admit: bool = True
) -> Callable[[Handler], Handler]:
    """Wrap a handler: ServerError -> the protocol's error body. Inference requests are timed and,
    with ``admit``, passed through :meth:`ModelHost.begin` for the model named in the path (refused
    while loading or draining, counted for the drain). Without ``admit`` the handler admits itself
    with :func:`admitted` once it has read the model name from the body."""

    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            host = request.app[HOST]
            if not inference:
                try:
                    return await handler(request)
                except ServerError as e:
                    return render(e)
                except ClientGone:
                    return client_gone_response()
            start = time.perf_counter()
            admitted = False
            try:
                if admit:
                    host.begin(request.match_info["name"])
                    admitted = True
                response = await handler(request)
            except ServerError as e:
                response = render(e)
            except ClientGone:
                response = client_gone_response()
            finally:
                if admitted:
                    host.end()
            if host.state == "draining" and not response.prepared:
                # Tell keep-alive clients to reconnect elsewhere; this replica is going away.
                response.force_close()
            request.app[METRICS].observe(protocol, time.perf_counter() - start, response.status)
            return response

        return run

    return wrap


@contextmanager
def admitted(host: ModelHost, name: str) -> Iterator[None]:
    host.begin(name)
    try:
        yield
    finally:
        host.end()


class ClientGone(Exception):
    """The client closed its connection before the request body was in: its own doing (a client
    timeout, an aborted upload, the activator cutting off a body over its limit), not a failure
    of this server. `endpoint` answers it with 499, which nobody reads but the metrics."""


def client_gone_response() -> web.Response:
    return web.Response(status=CLIENT_CLOSED_REQUEST, reason="Client Closed Request")


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge("request body is larger than this server's limit (--max-body-bytes)") from e
    except ConnectionError as e:
        # aiohttp fails the body read with ConnectionResetError("Connection lost"); left to
        # propagate, aiohttp would log it as a server error with a full traceback.
        log.info(
            "client went away mid-body model=%s: %s %s (%s): %s",
            request.app[HOST].name,
            request.method,
            request.path,
            "chunked" if request.content_length is None else f"Content-Length {request.content_length}",
            e,
        )
        raise ClientGone(str(e)) from e


async def read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from e


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )
