"""The request-head limit, the same on both data paths, and quiet logs for malformed requests.

A request head (request line and headers) may be `MAX_HEAD_BYTES`; past that the activator
answers 431 itself, before routing, so an oversized head never reaches (or cold-starts) a replica.
The fast path measures a head as httptools parses it (fastpath.py); the aiohttp path lets
aiohttp's parser take lines up to the same size and measures the whole head in `limit_head`.
A head is counted as it is canonically written: `METHOD SP target SP HTTP/1.1 CRLF`, one
`Name: value CRLF` per header, and the blank line.

aiohttp logs a request it cannot parse (a line over its limit, a bad method) with a full
traceback at ERROR, as if the server had failed; a malformed request is the client's doing, so
`quiet_malformed_requests` turns that record into one WARNING line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

MAX_HEAD_BYTES: Final = 64 * 1024   # nginx's default is 4 buffers of 8 KiB, a line each at most
HEAD_FRAMING_BYTES: Final = 14      # " ", " HTTP/1.1", CRLF after the request line; the blank line
LINE_FRAMING_BYTES: Final = 4       # ": " and CRLF around one header's name and value

# aiohttp's own defaults (8190 bytes a line or header) are far below MAX_HEAD_BYTES; raised so that
# only the total decides, and the two data paths accept the same heads.
AIOHTTP_HANDLER_ARGS: Final = {"max_line_size": MAX_HEAD_BYTES, "max_field_size": MAX_HEAD_BYTES}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HeadTooLarge(Exception):
    """Raised from the fast path's parser callback to stop parsing a head over the limit."""

    def __init__(self, size_bytes: int) -> None:
        super().__init__(f"request head of {size_bytes} bytes, limit {MAX_HEAD_BYTES}")
        self.size_bytes = size_bytes


def head_size(request: web.BaseRequest) -> int:
    """The request head's size as written canonically (see the module docstring)."""
    size = HEAD_FRAMING_BYTES + len(request.method) + len(request.raw_path)
    for name, value in request.raw_headers:
        size += len(name) + len(value) + LINE_FRAMING_BYTES
    return size


def too_large_response() -> web.Response:
    response = web.Response(status=431, text="request head too large")
    response.force_close()
    return response


@web.middleware
async def limit_head(request: web.Request, handler: Handler) -> web.StreamResponse:
    """431 for a head over MAX_HEAD_BYTES, before the activator routes (or cold-starts) anything."""
    size = head_size(request)
    if size > MAX_HEAD_BYTES:
        log.info("request head of %d bytes from %s refused (431), limit %d", size, request.remote,
                 MAX_HEAD_BYTES)
        return too_large_response()
    return await handler(request)


class QuietMalformedRequests(logging.Filter):
    """On aiohttp's server logger: a request aiohttp could not parse becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "malformed request from %s refused (%d): %s"
            record.args = (peer, exc.code, exc.message)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_requests(logger: logging.Logger | None = None) -> None:
    """Install `QuietMalformedRequests` on aiohttp's server logger, once per process."""
    target = logger or logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietMalformedRequests) for f in target.filters):
        target.addFilter(QuietMalformedRequests())
