"""Leader election on a lease record, so that exactly one autoscaler writes replica counts.

The rules are client-go's: a follower trusts only its own clock, so it considers the lease expired
when it has seen no change to the record for `lease_duration_s`; a leader that could not renew for
`renew_deadline_s` stops acting at once, before any follower can take over, because
`renew_deadline_s < lease_duration_s`. `is_leader()` checks that deadline at the moment of asking,
so a writer that checks right before writing never overlaps with the next leader (the margin
`lease_duration_s - renew_deadline_s` covers a write in flight).

Where the record lives is a `LeaseStore`: a coordination.k8s.io Lease in `backends/k8s_lease.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str
    lease_duration_s: float
    acquire_time_s: float        # unix seconds, as written by the holder
    renew_time_s: float
    transitions: int = 0
    holder_address: str = ""     # where the holder's HTTP API answers (stats ingest)
    version: str = ""            # the store's optimistic-concurrency token ("" for a new record)


class LeaseStore(Protocol):
    async def get(self) -> LeaseRecord | None: ...

    async def create(self, record: LeaseRecord) -> LeaseRecord | None:
        """The stored record, or None when one already exists."""
        ...

    async def update(self, record: LeaseRecord) -> LeaseRecord | None:
        """The stored record, or None when `record.version` is stale (someone else wrote)."""
        ...


@dataclass(frozen=True, slots=True)
class ElectionConfig:
    identity: str
    address: str = ""
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("need 0 < retry_period_s < renew_deadline_s < lease_duration_s")


class LeaderElector:
    def __init__(self, store: LeaseStore, config: ElectionConfig, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 on_started: Callable[[], None] | None = None,
                 on_stopped: Callable[[], None] | None = None) -> None:
        self.store = store
        self.config = config
        self._monotonic = monotonic
        self._wall = wall
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._leading = False
        self._renewed_at = float("-inf")
        self.observed: LeaseRecord | None = None
        self._observed_at = float("-inf")

    def is_leader(self) -> bool:
        return self._leading and self._monotonic() < self._renewed_at + self.config.renew_deadline_s

    @property
    def leader_address(self) -> str:
        """The current holder's address as last seen; '' when unknown."""
        return self.observed.holder_address if self.observed is not None else ""

    def _observe(self, record: LeaseRecord | None) -> None:
        if record is None:
            return
        old = self.observed
        if old is None or (old.holder, old.renew_time_s, old.version) != (
                record.holder, record.renew_time_s, record.version):
            self._observed_at = self._monotonic()
        self.observed = record

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("leader election: %s is now the leader", self.config.identity)
            if self._on_started is not None:
                self._on_started()
        else:
            log.warning("leader election: %s stopped leading", self.config.identity)
            if self._on_stopped is not None:
                self._on_stopped()

    async def step(self) -> bool:
        """One acquire-or-renew attempt; returns whether this instance leads afterwards."""
        cfg = self.config
        now_wall, now = self._wall(), self._monotonic()
        try:
            current = await self.store.get()
            self._observe(current)
            mine = current is not None and current.holder == cfg.identity
            if current is None:
                new = LeaseRecord(cfg.identity, cfg.lease_duration_s, now_wall, now_wall,
                                  holder_address=cfg.address)
                stored = await self.store.create(new)
            elif mine or not current.holder or now >= self._observed_at + current.lease_duration_s:
                stored = await self.store.update(replace(
                    current, holder=cfg.identity, lease_duration_s=cfg.lease_duration_s,
                    renew_time_s=now_wall, holder_address=cfg.address,
                    acquire_time_s=current.acquire_time_s if mine else now_wall,
                    transitions=current.transitions if mine else current.transitions + 1))
            else:
                stored = None
        except (OSError, TimeoutError, RuntimeError) as e:
            log.warning("leader election: %s could not reach the lease: %s", cfg.identity, e)
            stored = None
        if stored is not None:
            self._observe(stored)
            self._renewed_at = now
            self._set_leading(True)
        elif not self.is_leader():
            self._set_leading(False)
        return self.is_leader()

    async def run(self) -> None:
        """Acquire, then renew every retry period, until cancelled (then release if leading)."""
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.config.retry_period_s)
        finally:
            if self._leading:
                await asyncio.shield(self.release())

    async def release(self) -> None:
        """Give the lease up at once, so that a follower need not wait out the lease duration."""
        was_leading = self.is_leader()
        self._set_leading(False)
        self._renewed_at = float("-inf")
        if not was_leading or self.observed is None or self.observed.holder != self.config.identity:
            return
        try:
            await self.store.update(replace(self.observed, holder="", holder_address="",
                                            renew_time_s=self._wall()))
        except (OSError, TimeoutError, RuntimeError) as e:
            log.warning("leader election: could not release the lease: %s", e)
