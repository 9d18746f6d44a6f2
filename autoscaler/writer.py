"""The single writer of replica counts: the only caller of `backend.scale`.

A count is sent only when it differs from the one last sent for the model (or the backend reports a
different target at a resync), and never two calls for one model at once: a decision made while a
call is in flight waits, and only the newest such decision is sent after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from autoscaler.decisions import DecisionTable

if TYPE_CHECKING:
    from autoscaler.backends.base import Backend

log = logging.getLogger(__name__)


class ScaleWriter:
    def __init__(self, backend: Backend, table: DecisionTable, row_of: Mapping[str, int]) -> None:
        self.backend = backend
        self.table = table            # its `told` column: what was last sent per row
        self.row_of = row_of          # the autoscaler's live models, by name
        # The event loop the autoscaler runs on; also the one pokes are handed to. Taken from the
        # first scale call when run() has not set it yet.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scaling: dict[str, asyncio.Task[None]] = {}
        self.closing = False
        self._next_scale: dict[str, int] = {}

    def forget(self, name: str) -> None:
        self._next_scale.pop(name, None)

    def apply(self, name: str, row: int, replicas: int) -> None:
        if replicas == self.table.told[row]:
            return
        self.table.told[row] = replicas
        if name in self.scaling:
            self._next_scale[name] = replicas  # one call per model at a time; the newest wins
            return
        self._start_scale(name, replicas)

    def _start_scale(self, name: str, replicas: int) -> None:
        if self.loop is None:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                log.warning("no event loop: cannot scale model=%s to %d yet", name, replicas)
                self.table.told[self.row_of[name]] = -1
                return
        task = self.loop.create_task(self._scale(name, replicas), name=f"scale-{name}")
        self.scaling[name] = task

    async def _scale(self, name: str, replicas: int) -> None:
        try:
            await self.backend.scale(name, replicas)
            log.info("scaled model=%s replicas=%d", name, replicas)
        except Exception:
            log.exception("scale failed model=%s replicas=%d; retrying next tick", name, replicas)
            row = self.row_of.get(name)
            if row is not None and self.table.told[row] == replicas:
                self.table.told[row] = -1
        finally:
            del self.scaling[name]
            following = self._next_scale.pop(name, None)
            if following is not None and following != replicas and name in self.row_of and not self.closing:
                self._start_scale(name, following)

    def resync(self) -> None:
        """Re-send targets the backend reports differently (a backend restart, a lost call)."""
        try:
            reported = self.backend.status()
        except Exception:
            log.exception("backend status failed")
            return
        for name, row in self.row_of.items():
            entry = reported.get(name)
            target = entry.get("desired") if isinstance(entry, dict) else None
            told = int(self.table.told[row])
            if isinstance(target, int) and told >= 0 and target != told and name not in self.scaling:
                log.warning("backend target differs model=%s backend=%d ours=%d", name, target, told)
                self.table.told[row] = -1
                self.apply(name, row, told)
