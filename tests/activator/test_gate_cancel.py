"""A queued request whose client leaves in the same event-loop turn as a slot is handed to it.

The gate's wait was `asyncio.wait_for(ticket.future, timeout)`. On Python 3.11, when the waiting
task is cancelled after the ticket's future got its result but before the task woke up, wait_for
returns the result and drops the cancel, so the branch in acquire() that gives such a slot back
was never reached, and the aiohttp path (`build_app`, which the cluster activator serves) went on
to proxy the request of a client that was gone, holding the slot for the whole upstream call.
"""

from __future__ import annotations

import asyncio

import pytest

from activator.queue import ModelGate
from autoscaler.backends.base import Endpoint, EndpointSet


async def test_a_cancel_in_the_turn_of_the_hand_out_gives_the_slot_back() -> None:
    gate = ModelGate("m", capacity=1, max_queued=10, timeout_s=30, poke=lambda _model: None)
    request = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.queued == 1
    gate.update(EndpointSet("m", (Endpoint("r0", "127.0.0.1", 9),), version=1))  # the slot is handed out
    request.cancel()                                                              # and the client leaves
    with pytest.raises(asyncio.CancelledError):
        await request
    assert gate.replicas[0].inflight == 0, "the slot went to a request that no longer exists"


async def test_a_cancel_while_queued_leaves_no_trace() -> None:
    """The ordinary case (no hand-out in the same turn): the request leaves the queue."""
    gate = ModelGate("m", capacity=1, max_queued=10, timeout_s=30, poke=lambda _model: None)
    request = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert gate.queued == 0
    gate.update(EndpointSet("m", (Endpoint("r0", "127.0.0.1", 9),), version=1))
    assert gate.replicas[0].inflight == 0
