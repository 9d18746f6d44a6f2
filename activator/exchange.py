"""One request/response on the fast path, from parsed head to last response byte.

States: NEW -> (WAIT_BODY: the OpenAI body names the model) -> (QUEUED: no free slot, waiting in
the model's gate) -> (CONNECTING: no pooled connection) -> SENT -> RESPONDING -> DONE. Whatever
ends it (response complete, error, client gone, replica gone), `finish` runs exactly once and
gives back the slot, closes the load interval and counts the request: the fields and those
endings are `ExchangeState` (activator/exchange_state.py); this module moves an exchange forward.
"""

from __future__ import annotations

import asyncio
import logging

from activator.app import RETRYABLE_METHODS
from activator.breaker import Replica
from activator.errors import (
    ActivatorError,
    BadRequest,
    BodyTooLarge,
    ShuttingDown,
    UnknownModel,
    UpstreamFailed,
    UpstreamTimeout,
)
from activator.exchange_state import (
    CODES,
    CONNECTING,
    DONE,
    QUEUED,
    RESPONDING,
    SENT,
    WAIT_BODY,
    ExchangeState,
)
from activator.http1 import CONTINUE, UpstreamConn, inject
from activator.proxy import BUFFER_BODY_BYTES
from activator.routing import BODY_PREFIX_BYTES, MODEL_LIST_PATHS, model_from_body

log = logging.getLogger(__name__)

RETRYABLE = frozenset(m.encode() for m in RETRYABLE_METHODS)
# Paths the activator answers itself (Activator.local_endpoint): health, metadata, model lists.
LOCAL_PATHS = frozenset({b"/healthz", b"/v2", b"/v2/health/live", b"/v2/health/ready",
                         *(p.encode() for p in MODEL_LIST_PATHS)})


def _wire(chunks: list[bytes], chunked: bool) -> bytes:
    if not chunked:
        return b"".join(chunks)
    return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks if c)


class Exchange(ExchangeState):
    __slots__ = ()

    # --- body, as the parser delivers it ---------------------------------------------------

    def add_body(self, data: bytes) -> None:
        if self.state == DONE:
            return
        self.body_len += len(data)
        if self.body_len > self.limit:
            self._too_large()
            return
        up = self.up
        if up is not None and self.state >= SENT:
            wire = b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data
            up.write(wire)
            self._keep(wire)
        else:
            self.body.append(data)
            self.client.buffered += len(data)

    def end_body(self) -> None:
        self.body_done = True
        if self.state == DONE:
            return
        up = self.up
        if up is not None and self.state >= SENT:
            if self.chunked and not self.end_sent:
                self.end_sent = True
                up.write(b"0\r\n\r\n")
                self._keep(b"0\r\n\r\n")
            self.request_sent = True

    def _keep(self, wire: bytes) -> None:
        sent = self.sent
        if sent is not None:
            sent.append(wire)
            if self.body_len > BUFFER_BODY_BYTES:
                self.sent = None   # too big to hold for a retry; it streams through

    def body_arrived(self) -> None:
        if self.body_done or self.body_len >= BODY_PREFIX_BYTES:
            prefix = b"".join(self.body)[:BODY_PREFIX_BYTES]
            try:
                model = model_from_body(prefix)
            except ActivatorError as err:
                self.fail(err)
                return
            self._routed(model)

    # --- routing and slots ------------------------------------------------------------------

    def begin(self) -> None:
        fp = self.client.fp
        act = fp.activator
        url = self.url
        q = url.find(b"?")
        path = url if q < 0 else url[:q]
        if self.method in (b"GET", b"HEAD") and path in LOCAL_PATHS:
            local = act.local_endpoint(self.method.decode(), path.decode("latin-1"))
            if local is not None:
                self._respond(local[0], local[1])
                return
        route = fp.route(self.host, path)
        self.shape = route.shape
        if act.closing:
            self.fail(ShuttingDown("the activator is shutting down", retry_after_s=1))
            return
        if self.expect and not self.body_done and not self.body_len:
            self.client.write(CONTINUE)
        if route.needs_body_model:
            self.limit = max((s.queue.max_body_bytes for s in act.services.values()), default=self.limit)
            self.state = WAIT_BODY
            self.body_arrived()
            return
        self._routed(route.model)

    def _routed(self, model: str | None) -> None:
        act = self.client.fp.activator
        if model is None:
            path = self.url.decode("latin-1")
            self.fail(BadRequest(f"cannot tell which model {self.method.decode()} {path} is for: use "
                                 "/v1/models/NAME, /v2/models/NAME, a known Host, or an OpenAI "
                                 "body with 'model'"))
            return
        gate = act.gates.get(model)
        if gate is None:
            self.fail(UnknownModel(f"model {model!r} not found", model=model))
            return
        self.model = model
        self.gate = gate
        self.limit = act.services[model].queue.max_body_bytes
        size = max(self.content_length, self.body_len)
        if size > self.limit:
            self.fail(BodyTooLarge(f"request body of {size} bytes is over the limit of {self.limit}"))
            return
        self.start_s = act.clock()
        self.load = act.tracker.get(model)
        self.load.enter(self.start_s)
        self.entered = True
        self._acquire()

    def _acquire(self) -> None:
        assert self.gate is not None
        replica = self.gate.try_acquire()
        if replica is not None:
            self._got(replica)
            return
        self.state = QUEUED
        task = asyncio.ensure_future(self.gate.acquire())
        self.task = task  # type: ignore[assignment]
        task.add_done_callback(self._acquired)

    def _acquired(self, task: asyncio.Future[tuple[Replica, float, bool]]) -> None:
        self.task = None
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            if isinstance(err, ActivatorError):
                self.fail(err)
            else:
                log.error("acquire failed model=%s", self.model, exc_info=err)
                self.fail(UpstreamFailed("internal error while waiting for a replica"))
            return
        replica, waited_s, cold = task.result()
        if self.state == DONE:   # the client left as the slot arrived
            assert self.gate is not None
            self.gate.release(replica)
            return
        metrics = self.client.fp.activator.metrics
        metrics.queue_wait.labels(self.model).observe(waited_s)
        self.waited_s += waited_s
        self.cold = self.cold or cold
        self._got(replica)

    def _got(self, replica: Replica) -> None:
        self.replica = replica
        conn = self.client.fp.pool.take(replica.url)
        if conn is not None:
            self.reused = True
            self._send(conn)
            return
        self._connect()

    def _connect(self) -> None:
        replica = self.replica
        assert replica is not None
        self.state = CONNECTING
        self.reused = False
        ep = replica.endpoint
        task = asyncio.ensure_future(self.client.fp.pool.connect(replica.url, ep.host, ep.port))
        self.task = task  # type: ignore[assignment]
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Future[UpstreamConn]) -> None:
        self.task = None
        if task.cancelled():
            return
        if task.exception() is not None:
            self.on_upstream_lost(False, False)
            return
        conn = task.result()
        if self.state == DONE:
            self.client.fp.pool.put(conn)
            return
        self._send(conn)

    # --- forwarding -------------------------------------------------------------------------

    def _send(self, conn: UpstreamConn) -> None:
        replica = self.replica
        assert replica is not None
        self.up = conn
        self.state = SENT
        ep = replica.endpoint
        parts = [self.method, b" ", self.url, b" HTTP/1.1\r\n",
                 self.client.fp.pool.host_line(replica.url, ep.host, ep.port), *self.head]
        peer = self.client.peer
        if self.xff:
            parts += (b"X-Forwarded-For: ", self.xff, b", " if peer else b"", peer, b"\r\n")
        elif peer:
            parts += (b"X-Forwarded-For: ", peer, b"\r\n")
        if self.host:
            parts += (b"X-Forwarded-Host: ", self.host, b"\r\n")
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length >= 0:
            parts += (b"Content-Length: ", b"%d" % self.content_length, b"\r\n")
        parts.append(b"\r\n")
        if self.sent:
            parts += self.sent           # a retry: the body we already sent once
        if self.body:
            wire = _wire(self.body, self.chunked)
            self.client.buffered -= sum(len(c) for c in self.body)
            self.body = []
            parts.append(wire)
            self._keep(wire)
        if self.body_done:
            if self.chunked and not self.end_sent:
                self.end_sent = True
                parts.append(b"0\r\n\r\n")
                self._keep(b"0\r\n\r\n")
            self.request_sent = True
        if self.client.write_paused:
            conn.pause_reading(True)
        conn.send(self, b"".join(parts), self.method == b"HEAD")
        self.client.flow()

    # --- ResponseListener -------------------------------------------------------------------

    def on_response_head(self, data: bytes, head_end: int, status: int, keep_alive: bool) -> None:
        if status == 503 and not keep_alive and self.up is not None and self.attempts == 1 and \
                self.sent is not None and self.method in RETRYABLE:
            # A replica that got SIGTERM answers what reaches it afterwards with 503 and closes
            # the connection: requests that were on the wire as the backend took it out of
            # rotation. That is a refusal, not an answer: retry it like a refused connection.
            up, self.up = self.up, None
            up.abandon()
            self.on_upstream_lost(False, False)
            return
        self.state = RESPONDING
        self.status = status
        if not keep_alive:
            self.close_after = True   # the replica's head may say so, or delimit by EOF
        if self.cold:
            act = self.client.fp.activator
            assert self.model is not None and self.gate is not None
            data = inject(data[:head_end], act.cold_headers(self.model, self.gate, self.waited_s)) + \
                data[head_end:]
        self.client.write(data)

    def on_response_data(self, data: bytes) -> None:
        self.client.write(data)

    def on_response_done(self) -> None:
        self.up = None
        if not self.body_done:
            self.close_after = True   # the rest of the request body would be read as a request
        self.finish(CODES.get(self.status) or str(self.status))

    def on_upstream_paused(self, paused: bool) -> None:
        self.client.up_blocked = paused
        self.client.flow()

    def on_upstream_timeout(self, responding: bool) -> None:
        self.up = None
        if responding:
            self.close_after = True
            self.finish("504")
            return
        self.fail(UpstreamTimeout(f"replica {self.url_of_replica()} did not answer within "
                                  f"{self.client.fp.pool.timeout_s:g}s"))

    def on_upstream_lost(self, responding: bool, reused: bool) -> None:
        self.up = None
        if self.state == DONE:
            return
        if responding:
            # Headers are gone already; the only honest signal left is an aborted stream.
            self.close_after = True
            self.finish(CODES.get(self.status) or "502")
            return
        replica = self.replica
        gate = self.gate
        assert replica is not None and gate is not None
        retryable = self.sent is not None and self.method in RETRYABLE
        if retryable and reused and self.reused:
            # A pooled connection the replica had already closed: not the replica's fault.
            self.request_sent = False
            self._connect()
            return
        gate.fail(replica)
        gate.release(replica)
        self.replica = None
        if not retryable or self.attempts > 1:
            self.fail(UpstreamFailed(f"replica {replica.url} failed before responding"))
            return
        # A replica that refused us is usually one being scaled down: never lose the request;
        # wait for (or cold-start) another one, once.
        self.attempts += 1
        self.request_sent = False
        act = self.client.fp.activator
        act.metrics.retries.labels(self.model).inc()
        log.info("retrying on another replica model=%s replica=%s", self.model, replica.url)
        self._acquire()
