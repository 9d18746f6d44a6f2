"""One exchange's state and its endings: the fields the data path fills, and `finish`, run exactly once.

Whatever ends an exchange (response complete, error, client gone, replica gone), `finish` runs
exactly once: it gives back the slot, closes the load interval and counts the request; `fail`
first answers with the error when nothing was sent to the client yet. How an exchange moves from
state to state is `activator/exchange.py`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from activator.errors import ActivatorError, BodyTooLarge
from activator.http1 import render, render_error

if TYPE_CHECKING:
    from activator.breaker import Replica
    from activator.fastpath import ClientConn
    from activator.http1 import UpstreamConn
    from activator.queue import ModelGate
    from activator.stats import ModelLoad

NEW, WAIT_BODY, QUEUED, CONNECTING, SENT, RESPONDING, DONE = range(7)
CODES = {code: str(code) for code in range(100, 600)}
JSON = [("Content-Type", "application/json")]


class ExchangeState:
    __slots__ = (
        "attempts", "body", "body_done", "body_len", "chunked", "client", "close_after", "cold",
        "content_length", "end_sent", "entered", "expect", "gate", "has_body", "head", "host",
        "keep_alive", "limit", "load", "method", "model", "replica", "request_sent", "reused",
        "sent", "shape", "start_s", "state", "status", "task", "up", "url", "waited_s", "xff",
    )

    def __init__(self, client: ClientConn) -> None:
        self.client = client
        self.url = b""
        self.head: list[bytes] = []        # forwarded header lines, in pieces
        self.host = b""
        self.xff = b""
        self.content_length = -1
        self.chunked = False
        self.expect = False
        self.method = b"GET"
        self.keep_alive = True
        self.has_body = False
        self.body: list[bytes] = []        # body bytes not yet sent upstream (decoded)
        self.body_len = 0
        self.body_done = True
        self.end_sent = False              # the chunked terminator went upstream
        self.sent: list[bytes] | None = []  # what went upstream after the head, kept for a retry
        self.request_sent = False
        self.state = NEW
        self.status = 0
        self.close_after = False
        self.shape: str = "kserve"
        self.model: str | None = None
        self.gate: ModelGate | None = None
        self.load: ModelLoad | None = None
        self.replica: Replica | None = None
        self.up: UpstreamConn | None = None
        self.task: asyncio.Future[object] | None = None
        self.limit = 1 << 62
        self.entered = False
        self.start_s = 0.0
        self.waited_s = 0.0
        self.cold = False
        self.attempts = 1
        self.reused = False

    def url_of_replica(self) -> str:
        return self.replica.url if self.replica is not None else "?"

    def fail(self, err: ActivatorError) -> None:
        """Answer with the error if nothing was sent yet; otherwise cut the stream."""
        if self.state == DONE:
            return
        self._detach()
        if err.model is None and self.model is not None:
            err.model = self.model
        if self.state == RESPONDING:
            self.close_after = True
        else:
            if not self.body_done:
                self.close_after = True
            self.client.write(render_error(err, self.shape,  # type: ignore[arg-type]
                                           close=self.close_after or not self.keep_alive))
        if not self.entered:
            self.client.fp.count(err.model or "", CODES[err.status])
            self._end(self.close_after)
            return
        self.finish(CODES[err.status])

    def _respond(self, status: int, body: bytes) -> None:
        data = render(status, body, JSON, close=not self.keep_alive)
        if self.method == b"HEAD":   # the same head, Content-Length included, and no body
            data = data[:len(data) - len(body)]
        self.client.write(data)
        self._end(False)

    def _too_large(self) -> None:
        self.close_after = True
        self.fail(BodyTooLarge(f"request body larger than {self.limit} bytes"))

    def abort(self) -> None:
        """The client went away: drop the queued or upstream request."""
        if self.state == DONE:
            return
        self._detach()
        self.close_after = True
        self.finish("499")

    def _detach(self) -> None:
        """Drop whatever is under way for this exchange: a wait for a slot or a connection (the
        gate dequeues a cancelled wait), or a request out on a replica connection."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.up is not None:
            self.up.abandon()
            self.up = None

    def finish(self, code: str) -> None:
        if self.state == DONE:
            return
        fp = self.client.fp
        if self.replica is not None:
            assert self.gate is not None
            self.gate.release(self.replica)
            self.replica = None
        if self.entered:
            assert self.load is not None and self.model is not None
            end = fp.activator.clock()
            self.load.leave(end)
            fp.observe(self.model, end - self.start_s)
            fp.count(self.model, code)
        self._end(self.close_after)

    def _end(self, close: bool) -> None:
        self.state = DONE
        if self.body:
            self.client.buffered -= sum(len(c) for c in self.body)
            self.body = []
        self.client.exchange_done(self, close or not self.keep_alive)
