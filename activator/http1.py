"""HTTP/1.1 plumbing for the activator's fast path: responses rendered to bytes, and pooled
keep-alive connections to replicas.

An upstream connection parses the replica's response with httptools only to find where the head
ends and where the message ends; the bytes themselves go to the client as they arrived. One timer
per connection covers both the read timeout (while a request is out) and the idle timeout (while
pooled); it is re-armed only when it fires, so the warm path never touches the timer heap.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Protocol, cast

import httptools

from activator.errors import ActivatorError, Shape, error_response

log = logging.getLogger(__name__)

# Request headers that describe this hop, not the request; we set Host/framing ourselves.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade", b"host", b"expect", b"proxy-connection",
    b"content-length", b"x-forwarded-for", b"x-forwarded-host",
})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CRLF2 = b"\r\n\r\n"


def render(status: int, body: bytes, headers: list[tuple[str, str]], *, close: bool) -> bytes:
    """A complete response with a Content-Length body."""
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def render_error(err: ActivatorError, shape: Shape, *, close: bool) -> bytes:
    """The same status, body and headers the aiohttp path sends (errors.py builds them)."""
    resp = error_response(err, shape)
    body = resp.body if isinstance(resp.body, bytes) else b""
    headers = [("Content-Type", "application/json")]
    if err.retry_after_s is not None:
        headers.append(("Retry-After", str(err.retry_after_s)))
    return render(resp.status, body, headers, close=close)


def inject(head: bytes, extra: dict[str, str]) -> bytes:
    """`head` (ending in a blank line) with `extra` headers added before the blank line."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode("latin-1")
    return head[:-2] + lines + b"\r\n"


class ResponseListener(Protocol):
    """What an upstream connection reports to the exchange it carries."""

    request_sent: bool      # the whole request (body included) went out on this connection

    def on_response_head(self, data: bytes, head_end: int, status: int, keep_alive: bool) -> None: ...

    def on_response_data(self, data: bytes) -> None: ...

    def on_response_done(self) -> None: ...

    def on_upstream_lost(self, responding: bool, reused: bool) -> None: ...

    def on_upstream_timeout(self, responding: bool) -> None: ...

    def on_upstream_paused(self, paused: bool) -> None: ...


class UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to one replica, carrying one exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.listener: ResponseListener | None = None
        self.pending = b""            # response bytes received before the head was complete
        self.headers_done = False
        self.message_done = False
        self.in_body = False
        self.informational = 0        # 1xx heads seen before the final one
        self.head_request = False
        self.status = 0
        self.keep_alive = True
        self.uses = 0
        self.last_io_s = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.read_paused = False

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.last_io_s = self.pool.loop.time()

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:
            # A replica has nothing to say on an idle connection; whatever it is, drop it.
            self.close()
            return
        self.last_io_s = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            log.warning("malformed response from replica %s", self.key)
            self.close()
            return
        if not self.in_body:
            if not self.headers_done:
                self.pending += data
                return
            buf = self.pending + data if self.pending else data
            self.pending = b""
            end = -4
            for _ in range(self.informational + 1):
                end = buf.find(CRLF2, end + 4)
            self.in_body = True
            if self.head_request:
                # llhttp cannot be told a HEAD response has no body; start a fresh parser.
                self.message_done = True
                self.parser = httptools.HttpResponseParser(self)
            listener.on_response_head(buf, end + 4, self.status, self.keep_alive)
        else:
            listener.on_response_data(data)
        if self.message_done and self.listener is listener:
            self._complete(listener)

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_paused(True)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        listener = self.listener
        if listener is not None:
            self.listener = None
            listener.on_upstream_lost(self.in_body, self.uses > 1)

    # --- httptools callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.informational += 1
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.headers_done = True

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.message_done = True

    # --- used by the exchange ---------------------------------------------------------------

    def send(self, listener: ResponseListener, data: bytes, head_request: bool) -> None:
        assert self.transport is not None
        self.listener = listener
        self.head_request = head_request
        self.uses += 1
        self.last_io_s = self.pool.loop.time()
        if self.timer is None:
            self.timer = self.pool.loop.call_later(self.pool.timeout_s, self._tick)
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self, paused: bool) -> None:
        if self.transport is None or paused == self.read_paused or self.closed:
            return
        self.read_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def abandon(self) -> None:
        """The exchange is over before its response is (client gone): this connection is dirty."""
        self.listener = None
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # --- internals --------------------------------------------------------------------------

    def _complete(self, listener: ResponseListener) -> None:
        reusable = self.keep_alive and listener.request_sent and not self.closed
        self.listener = None
        self.headers_done = self.message_done = self.in_body = False
        self.informational = 0
        if reusable:
            self.pause_reading(False)
            self.pool.put(self)
        else:
            self.close()
        listener.on_response_done()

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.pool.loop.time()
        listener = self.listener
        if listener is None:
            left = self.last_io_s + self.pool.idle_timeout_s - now
            if left <= 0:
                self.close()
                return
        else:
            left = self.last_io_s + self.pool.timeout_s - now
            if left <= 0:
                self.listener = None
                responding = self.in_body
                self.close()
                listener.on_upstream_timeout(responding)
                return
        self.timer = self.pool.loop.call_later(left, self._tick)


class UpstreamPool:
    """Idle keep-alive connections per replica URL, most recently used first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, timeout_s: float,
                 connect_timeout_s: float = 10.0, idle_timeout_s: float = 30.0,
                 max_idle_per_replica: int = 512) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_idle = max_idle_per_replica
        self.idle: dict[str, list[UpstreamConn]] = {}
        self.all: set[UpstreamConn] = set()
        self.closed = False
        self._host_lines: dict[str, bytes] = {}

    def host_line(self, key: str, host: str, port: int) -> bytes:
        line = self._host_lines.get(key)
        if line is None:
            line = self._host_lines[key] = f"Host: {host}:{port}\r\n".encode("latin-1")
        return line

    def take(self, key: str) -> UpstreamConn | None:
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, key: str, host: str, port: int) -> UpstreamConn:
        async with asyncio.timeout(self.connect_timeout_s):  # not wait_for: 3.11's can drop a cancel
            _, conn = await self.loop.create_connection(lambda: UpstreamConn(self, key), host, port)
        self.all.add(conn)
        return conn

    def put(self, conn: UpstreamConn) -> None:
        idle = self.idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle or self.closed:
            conn.close()
            return
        idle.append(conn)

    def forget(self, conn: UpstreamConn) -> None:
        self.all.discard(conn)
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        self.closed = True
        for conn in list(self.all):
            conn.close()
        self.idle.clear()
