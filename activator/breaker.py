"""Per-replica breakers and the replica pick policy, as Knative's activator does it.

containerConcurrency 0 (unlimited) -> power of two choices on in-flight count;
1..3 -> first replica with a free slot (keeps small-concurrency replicas packed);
larger -> round robin over the replicas with a free slot.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from autoscaler.backends.base import Endpoint


class Replica:
    """One ready endpoint and its in-flight count (the breaker when capacity > 0)."""

    __slots__ = ("capacity", "endpoint", "failures", "inflight", "url")

    def __init__(self, endpoint: Endpoint, capacity: int) -> None:
        self.endpoint = endpoint
        self.url = endpoint.url
        self.capacity = capacity
        self.inflight = 0
        self.failures = 0

    def has_slot(self) -> bool:
        return self.capacity == 0 or self.inflight < self.capacity


class Picker:
    def __init__(self, capacity: int, rng: random.Random | None = None) -> None:
        self.capacity = capacity
        self._rng = rng or random.Random()
        self._next = 0

    def pick(self, replicas: Sequence[Replica]) -> Replica | None:
        n = len(replicas)
        if n == 0:
            return None
        if self.capacity == 0:
            if n == 1:
                return replicas[0]
            i = self._rng.randrange(n)
            j = self._rng.randrange(n - 1)
            if j >= i:
                j += 1
            a, b = replicas[i], replicas[j]
            return a if a.inflight <= b.inflight else b
        if self.capacity <= 3:
            for r in replicas:
                if r.inflight < r.capacity:
                    return r
            return None
        for k in range(n):
            r = replicas[(self._next + k) % n]
            if r.inflight < r.capacity:
                self._next = (self._next + k + 1) % n
                return r
        return None
