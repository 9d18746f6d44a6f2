"""Forwarding one request to one replica and streaming the answer back.

Small bodies are buffered (so a request refused by a replica that is shutting down can be sent to
another one); large ones stream through. Responses with a small Content-Length are read whole and
written in one go; everything else (SSE, chunked, large) is copied chunk by chunk as it arrives,
so a token stream reaches the client as the model produces it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from activator.errors import BodyTooLarge, UpstreamFailed, UpstreamTimeout

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
BUFFER_BODY_BYTES = 1024 * 1024
BUFFER_RESPONSE_BYTES = 256 * 1024


def upstream_headers(request: web.Request) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in request.headers.items():
        if key.lower() not in HOP_BY_HOP:
            headers.add(key, value)
    peer = request.remote
    if peer:
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if request.host:
        headers["X-Forwarded-Host"] = request.host
    return headers


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in upstream.items():
        if key.lower() not in HOP_BY_HOP:
            headers.add(key, value)
    return headers


async def stream_body(prefix: bytes, request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, after a prefix already read; enforces the size limit."""
    seen = len(prefix)
    if prefix:
        yield prefix
    async for chunk in request.content.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        yield chunk


async def send(session: aiohttp.ClientSession, method: str, url: str,
               headers: CIMultiDict[str], body: bytes | AsyncIterator[bytes] | None,
               read_timeout_s: float) -> aiohttp.ClientResponse:
    """Open the upstream request. Raises UpstreamFailed / UpstreamTimeout before any response."""
    try:
        return await session.request(
            method, url, headers=headers, data=body, allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout_s))
    except (TimeoutError, aiohttp.ServerTimeoutError) as e:
        raise UpstreamTimeout(f"replica {url} did not answer within {read_timeout_s:g}s") from e
    except BodyTooLarge:
        raise
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as e:
        raise UpstreamFailed(f"replica {url} failed before responding: {e.__class__.__name__}") from e


async def relay(request: web.Request, upstream: aiohttp.ClientResponse,
                extra_headers: dict[str, str] | None) -> web.StreamResponse:
    """Copy the upstream response to the client; streaming unless it is small and sized."""
    headers = response_headers(upstream.headers)
    if extra_headers:
        headers.update(extra_headers)
    length = upstream.content_length
    content_type = upstream.headers.get("Content-Type", "")
    if length is not None and length <= BUFFER_RESPONSE_BYTES and \
            not content_type.startswith("text/event-stream"):
        try:
            data = await upstream.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise UpstreamTimeout("replica stopped sending its response") from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise UpstreamFailed(f"replica failed while responding: {e.__class__.__name__}") from e
        return web.Response(status=upstream.status, body=data, headers=headers)
    response = web.StreamResponse(status=upstream.status, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError):
        # Headers are gone already; the only honest signal left is an aborted stream.
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
