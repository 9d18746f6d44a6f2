"""A model's gate: its ready replicas, their breakers, and the bounded queue of waiting requests.

A request either gets a replica slot at once (the warm path: no await, no allocation beyond the
pick) or waits in FIFO order until a slot frees up or a replica becomes ready. The queue is bounded
(`maxQueued`) and each wait has a deadline (`queue.timeout`); both fail fast with 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from activator.breaker import Picker, Replica
from activator.errors import QueueFull, QueueTimeout, ShuttingDown
from autoscaler.backends.base import EndpointSet


class Ticket:
    """What a queued request waits on; resolved with a replica or an error."""

    __slots__ = ("future", "queued_at")

    def __init__(self, future: asyncio.Future[Replica], queued_at: float) -> None:
        self.future = future
        self.queued_at = queued_at


class ModelGate:
    def __init__(self, model: str, *, capacity: int, max_queued: int, timeout_s: float,
                 poke: Callable[[str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.capacity = capacity
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self._poke = poke
        self._clock = clock
        self.replicas: list[Replica] = []
        self._by_id: dict[str, Replica] = {}
        self._picker = Picker(capacity)
        self._waiting: collections.deque[Ticket] = collections.deque()
        self.cold_since: float | None = None     # when we first waited with no replica at all
        self.last_cold_start_s: float | None = None
        self.closed = False

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def try_acquire(self) -> Replica | None:
        """The warm path: a replica with a free slot, or None. Never queues."""
        if self._waiting:          # FIFO: don't overtake requests already waiting
            return None
        r = self._picker.pick(self.replicas)
        if r is not None:
            r.inflight += 1
        return r

    async def acquire(self) -> tuple[Replica, float, bool]:
        """A replica slot; (replica, seconds waited, waited for a cold start)."""
        r = self.try_acquire()
        if r is not None:
            return r, 0.0, False
        if self.closed:
            raise ShuttingDown("the activator is shutting down", model=self.model, retry_after_s=1)
        if len(self._waiting) >= self.max_queued:
            raise QueueFull(f"model {self.model!r}: queue full ({self.max_queued} requests waiting)",
                            model=self.model, retry_after_s=1)
        cold = not self.replicas
        now = self._clock()
        if cold:
            if self.cold_since is None:
                self.cold_since = now
            # Poke on every cold arrival, not just the first: the autoscaler dedups, and a poke
            # lost to a scale-down in flight must not strand the queue.
            self._poke(self.model)
        ticket = Ticket(asyncio.get_running_loop().create_future(), now)
        self._waiting.append(ticket)
        try:
            # Not wait_for: on Python 3.11 it drops a cancel that lands in the turn the slot is
            # handed out, and the slot would go to a client that has left.
            async with asyncio.timeout(self.timeout_s):
                replica = await ticket.future
        except TimeoutError:
            raise QueueTimeout(
                f"model {self.model!r}: no replica became ready within {self.timeout_s:g}s",
                model=self.model, retry_after_s=max(1, int(self.timeout_s // 10))) from None
        except asyncio.CancelledError:
            # The client went away. If a slot was handed to us in the same instant, give it back.
            if ticket.future.done() and not ticket.future.cancelled():
                self.release(ticket.future.result())
            raise
        finally:
            if self._waiting and not ticket.future.done():
                ticket.future.cancel()
            try:
                self._waiting.remove(ticket)
            except ValueError:
                pass
        return replica, self._clock() - ticket.queued_at, cold

    def release(self, replica: Replica) -> None:
        replica.inflight -= 1
        if self._waiting and replica.has_slot() and replica.url in self._by_id:
            self._hand_out()

    def fail(self, replica: Replica) -> None:
        """The replica refused or reset a connection: take it out of rotation until the backend
        re-publishes it (a replica shutting down is the usual cause)."""
        if self._by_id.get(replica.url) is replica:
            del self._by_id[replica.url]
            self.replicas = [r for r in self.replicas if r is not replica]
        if not self.replicas:
            self._poke(self.model)

    def update(self, endpoints: EndpointSet) -> None:
        old = self._by_id
        fresh: dict[str, Replica] = {}
        for ep in endpoints.ready:
            r = old.get(ep.url)
            if r is None:
                r = Replica(ep, self.capacity)
            fresh[ep.url] = r
        self._by_id = fresh
        self.replicas = list(fresh.values())
        if self.replicas and self.cold_since is not None:
            self.last_cold_start_s = self._clock() - self.cold_since
            self.cold_since = None
        self._hand_out()

    def close(self) -> None:
        self.closed = True

    def _hand_out(self) -> None:
        while self._waiting:
            ticket = self._waiting[0]
            if ticket.future.done():
                self._waiting.popleft()
                continue
            r = self._picker.pick(self.replicas)
            if r is None:
                return
            r.inflight += 1
            self._waiting.popleft()
            ticket.future.set_result(r)
