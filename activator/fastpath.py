"""The activator's fast data path: HTTP/1.1 as raw asyncio protocols (httptools), same brain.

Routing, the per-model gates (queue, breakers), load tracking, metrics and the error mapping are
the `Activator`'s; only the bytes move differently. A request head is re-emitted with hop-by-hop
headers dropped and X-Forwarded-For/-Host added; the body streams to a pooled keep-alive replica
connection; the response bytes stream back exactly as the replica wrote them (chunked, SSE and
all), with two headers spliced into the head on a cold start. The warm path creates no task and
arms no timer: a slot is taken with `try_acquire()`, a pooled connection is popped, and the
response is written from the upstream protocol's `data_received`.

Requests on one client connection are served strictly in order (pipelining). A request whose
whole body we still hold (up to 1 MiB) is retried once on another replica if its replica refused
or reset the connection before answering, which is what a replica being scaled down does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from typing import cast
from urllib.parse import unquote

import httptools

from activator.app import Activator
from activator.exchange import Exchange
from activator.exchange_state import RESPONDING, WAIT_BODY, ExchangeState
from activator.http1 import HOP_BY_HOP, UpstreamPool, render
from activator.http1_limits import HEAD_FRAMING_BYTES, LINE_FRAMING_BYTES, MAX_HEAD_BYTES, HeadTooLarge
from activator.routing import Route
from activator.tally import FLUSH_PERIOD_S, Tally

log = logging.getLogger(__name__)

PAUSE_BUFFERED_BYTES = 1 << 20   # stop reading a client holding this much unsent body
PIPELINE_DEPTH = 16              # requests parsed ahead of the one being served
ROUTE_CACHE_SIZE = 4096
LINGER_S = 2.0                   # how long a closing connection swallows unread request bytes


class FastPath:
    """One listening socket's worth of fast path over one Activator: server, pool, reporter."""

    def __init__(self, activator: Activator, *, connect_timeout_s: float = 10.0,
                 upstream_idle_s: float = 30.0, client_keepalive_s: float = 75.0,
                 client_head_timeout_s: float = 60.0) -> None:
        self.activator = activator
        self.loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(self.loop, timeout_s=activator.upstream_timeout_s,
                                 connect_timeout_s=connect_timeout_s, idle_timeout_s=upstream_idle_s)
        self.client_keepalive_s = client_keepalive_s
        self.client_head_timeout_s = client_head_timeout_s
        self.clients: set[ClientConn] = set()
        self.server: asyncio.AbstractServer | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._routes: dict[tuple[bytes, bytes], Route] = {}
        self._router = activator.router
        self.tally = Tally(activator.metrics.requests, activator.metrics.duration)
        self.count = self.tally.count
        self.observe = self.tally.observe
        self._flusher: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 4096,
                    report_load: bool = True) -> asyncio.AbstractServer:
        if report_load:
            self._reporter = asyncio.create_task(
                self.activator.tracker.run(self.activator.report_period_s),
                name="activator-load-reporter")
        self._flusher = self.loop.call_later(FLUSH_PERIOD_S, self._flush_tick)
        self.server = await self.loop.create_server(
            lambda: ClientConn(self), host, port, reuse_port=reuse_port or None, backlog=backlog)
        return self.server

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (503), let those in flight and queued finish, up to grace_s."""
        await self.activator.drain(grace_s)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            client.close()
        self.pool.close()
        if self._flusher is not None:
            self._flusher.cancel()
        self.tally.flush()
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        if self.server is not None:
            await self.server.wait_closed()

    # --- small caches on the hot path -------------------------------------------------------

    def route(self, host: bytes, path: bytes) -> Route:
        router = self.activator.router
        if router is not self._router:   # the spec changed; routes may have too
            self._routes.clear()
            self._router = router
        key = (host, path)
        hit = self._routes.get(key)
        if hit is None:
            text = path.decode("latin-1")
            if "%" in text:
                text = unquote(text)
            hit = router.route(host.decode("latin-1") or None, text)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = hit
        return hit

    def flush_metrics(self) -> None:
        """Move tallied request counts and durations into Prometheus now."""
        self.tally.flush()

    def _flush_tick(self) -> None:
        self.tally.flush()
        self._flusher = self.loop.call_later(FLUSH_PERIOD_S, self._flush_tick)


async def serve_fast(activator: Activator, host: str, port: int, *, reuse_port: bool = False,
                     backlog: int = 4096) -> asyncio.AbstractServer:
    """Serve `activator` on the fast path; closing the returned server stops accepting. For a
    full shutdown (drain, close pooled connections) use a `FastPath` directly."""
    return await FastPath(activator).start(host, port, reuse_port=reuse_port, backlog=backlog)


class ClientConn(asyncio.Protocol):
    """One client connection: parses requests, serves them one at a time, in order."""

    def __init__(self, fp: FastPath) -> None:
        self.fp = fp
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.cur: Exchange | None = None                          # being parsed
        self.pipeline: collections.deque[Exchange] = collections.deque()   # [0] is being served
        self.active: Exchange | None = None
        self.buffered = 0
        self.up_blocked = False
        self.read_paused = False
        self.write_paused = False
        self.closed = False
        self.starting = False
        self.lingering = False
        # The request-head limit (http1_limits.py), kept off the warm path: a head completed in a
        # read is measured only when that read and the head's earlier reads could exceed it.
        self.head_bytes = -1          # bytes read into the head, never more than it; -1 between heads
        self.head_read = 0            # bytes of the reads the unfinished head spans: at least it
        self.head_bound = 0           # head_read plus the read being parsed
        self.head_fresh = False       # the head began in the read being parsed
        self.head_dropped = 0         # bytes of the hop-by-hop header lines, which are not forwarded
        self.head_since_s = 0.0
        self.last_io_s = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode("latin-1")
        self.fp.clients.add(self)
        self.last_io_s = self.fp.loop.time()
        self.timer = self.fp.loop.call_later(self._tick_period_s(), self._tick)

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        self.last_io_s = self.fp.loop.time()
        size = len(data)
        self.head_bound = self.head_read + size
        idle = self.cur is None
        last = self.pipeline[-1] if self.pipeline else None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, b"protocol upgrades are not supported")
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._reject(431, b"request head too large")
            else:
                self._reject(400, b"malformed HTTP request")
            return
        if self.head_bytes >= 0:
            # A head still arriving: httptools holds a header until it ends, so bound what a
            # client can make us hold by the bytes read. A read that also carried an earlier
            # request (its body, or a whole request) is not counted, as where the head began in
            # it is unknown: then one read more can come in before the 431. A head that
            # completes is measured exactly (on_headers_complete).
            if not self.head_fresh:
                self.head_bytes += size
                self.head_read += size
            else:
                self.head_fresh = False
                self.head_read = size
                if idle and (self.pipeline[-1] if self.pipeline else None) is last:
                    self.head_bytes = size   # the read held this head alone
            if self.head_bytes > MAX_HEAD_BYTES:
                self._reject(431, b"request head too large")
                return
        active = self.active
        if active is None:
            if self.pipeline:
                self._start_next()
        elif active.state == WAIT_BODY:
            active.body_arrived()
        self.flow()

    def eof_received(self) -> bool | None:
        if self.lingering and self.transport is not None:
            self.transport.close()
        return False   # a client that stops sending is gone (as nginx treats it)

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self.active
        if active is not None and active.up is not None:
            active.up.pause_reading(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.active
        if active is not None and active.up is not None:
            active.up.pause_reading(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fp.clients.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.pipeline:
            self.pipeline.popleft().abort()
        self.active = None

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.cur = Exchange(self)
        self.head_bytes = 0
        self.head_fresh = True
        self.head_dropped = 0
        self.head_since_s = self.last_io_s

    def on_url(self, url: bytes) -> None:
        assert self.cur is not None
        self.cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.cur
        assert ex is not None
        lower = name.lower()
        if lower not in HOP_BY_HOP:
            ex.head += (name, b": ", value, b"\r\n")
            return
        self.head_dropped += len(name) + len(value) + LINE_FRAMING_BYTES
        if lower == b"host":
            ex.host = value
        elif lower == b"content-length":
            ex.content_length = int(value)
        elif lower == b"transfer-encoding":
            ex.chunked = b"chunked" in value.lower()
        elif lower == b"x-forwarded-for":
            ex.xff = value
        elif lower == b"expect":
            ex.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.head_bytes = -1
        self.head_read = 0
        ex = self.cur
        assert ex is not None
        ex.method = self.parser.get_method()
        if self.head_bound > MAX_HEAD_BYTES:
            # Checked here, not after the read: a head can arrive whole in one read. Raised
            # through httptools, which stops parsing; data_received answers 431.
            size = HEAD_FRAMING_BYTES + len(ex.method) + len(ex.url) + sum(map(len, ex.head)) + \
                self.head_dropped
            if size > MAX_HEAD_BYTES:
                raise HeadTooLarge(size)
        ex.keep_alive = self.parser.should_keep_alive()
        ex.has_body = ex.chunked or ex.content_length > 0
        ex.body_done = not ex.has_body
        self.pipeline.append(ex)

    def on_body(self, data: bytes) -> None:
        ex = self.cur
        assert ex is not None
        ex.add_body(data)

    def on_message_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        self.cur = None
        ex.end_body()

    # --- serving ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def flow(self) -> None:
        """Read from the client only while there is somewhere for its bytes to go."""
        want = self.up_blocked or self.buffered > PAUSE_BUFFERED_BYTES or \
            len(self.pipeline) > PIPELINE_DEPTH
        if want != self.read_paused and not self.closed and self.transport is not None:
            self.read_paused = want
            if want:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def exchange_done(self, ex: ExchangeState, close: bool) -> None:
        if self.pipeline and self.pipeline[0] is ex:
            self.pipeline.popleft()
        if self.active is ex:
            self.active = None
        self.up_blocked = False
        if close:
            self.close(linger=not ex.body_done)
            return
        if not self.starting and self.pipeline:
            self._start_next()
        self.flow()

    def close(self, linger: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        self.closed = True
        if linger and self.transport.can_write_eof():
            # Closing with unread request bytes makes the kernel send a reset, which can destroy
            # the response before the client reads it; so half-close, and swallow what is still
            # coming for a moment (nginx's lingering close).
            self.lingering = True
            self.transport.write_eof()
            self.transport.resume_reading()
            self.fp.loop.call_later(LINGER_S, self.transport.close)
            return
        self.transport.close()

    def _start_next(self) -> None:
        self.starting = True
        try:
            while self.active is None and self.pipeline and not self.closed:
                ex = self.pipeline[0]
                self.active = ex
                ex.begin()
        finally:
            self.starting = False

    def _reject(self, status: int, message: bytes) -> None:
        """Refuse what the client is sending (unparsable, too big, too slow) and hang up."""
        if self.active is None or self.active.state < RESPONDING:
            self.write(render(status, message, [("Content-Type", "text/plain")], close=True))
        self.close(linger=True)
        while self.pipeline:
            self.pipeline.popleft().abort()
        self.active = None

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.fp.loop.time()
        if self.head_bytes >= 0 and self.active is None and \
                now - self.head_since_s >= self.fp.client_head_timeout_s:
            self._reject(408, b"request head not received in time")   # a slow-loris client
            return
        idle = self.active is None and not self.pipeline and self.head_bytes < 0
        if idle and now - self.last_io_s >= self.fp.client_keepalive_s:
            self.close()
            return
        self.timer = self.fp.loop.call_later(self._tick_period_s(), self._tick)

    def _tick_period_s(self) -> float:
        # Checked on a period rather than re-armed per request: the warm path touches no timer.
        return max(min(self.fp.client_keepalive_s, self.fp.client_head_timeout_s) / 2, 0.05)


def main(argv: list[str] | None = None) -> int:
    from activator.workers import main as workers_main

    return workers_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
