"""List-then-watch one resource, keeping a cache of its objects: the informer pattern, small.

A watch resumes from the last resourceVersion it saw; when the server says that version is gone
(410, after etcd compaction) or the connection fails, it lists again and reports the difference as
events, so a consumer never misses a deletion. A stream that simply ends (the server's watch
timeout) is resumed without a list. The API calls come from `KubeApi` in `kubernetes_api.py`; this
module never imports a Kubernetes client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

Obj = dict[str, Any]
EventHandler = Callable[[str, Obj], None]


class KubeError(RuntimeError):
    """An API call answered with an error status (0: no answer at all)."""

    def __init__(self, status: int, body: Obj) -> None:
        super().__init__(f"{status} {body.get('reason', '')}: {body.get('message', body)}")
        self.status = status


class WatchGone(Exception):
    """The resourceVersion to resume from is no longer in the server's history."""


class ListWatchApi(Protocol):
    async def list(self, path: str, label_selector: str) -> tuple[list[Obj], str]: ...

    def watch(self, path: str, label_selector: str, resource_version: str,
              timeout_s: float) -> AsyncIterator[Obj]: ...


class Informer:
    def __init__(self, api: ListWatchApi, path: str, on_event: EventHandler, *,
                 label_selector: str = "", watch_timeout_s: float = 300.0,
                 retry_s: float = 0.5, max_retry_s: float = 30.0) -> None:
        self.api = api
        self.path = path
        self.on_event = on_event
        self.label_selector = label_selector
        self.watch_timeout_s = watch_timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.cache: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.lists = 0   # how many times it (re)listed: tests check that 410 causes one

    async def run(self) -> None:
        delay = self.retry_s
        while True:
            try:
                version = await self._list()
                delay = self.retry_s
                while True:
                    version = await self._watch(version)
            except WatchGone:
                log.info("watch %s: resource version expired, listing again", self.path)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the API being down must not end the informer
                log.warning("watch %s failed: %s; retrying in %.1fs", self.path, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)

    async def _list(self) -> str:
        items, version = await self.api.list(self.path, self.label_selector)
        self.lists += 1
        fresh = {o["metadata"]["name"]: o for o in items}
        for name in [n for n in self.cache if n not in fresh]:
            self._deliver("DELETED", self.cache.pop(name))
        for name, obj in fresh.items():
            old = self.cache.get(name)
            if old is None or old["metadata"].get("resourceVersion") != obj["metadata"].get(
                    "resourceVersion"):
                self.cache[name] = obj
                self._deliver("ADDED" if old is None else "MODIFIED", obj)
        self.synced.set()
        return version

    async def _watch(self, version: str) -> str:
        async for event in self.api.watch(self.path, self.label_selector, version,
                                          self.watch_timeout_s):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchGone(obj.get("message", ""))
                raise RuntimeError(f"watch error: {obj.get('message', obj)}")
            version = (obj.get("metadata") or {}).get("resourceVersion", version)
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                self.cache.pop(name, None)
            else:
                self.cache[name] = obj
            self._deliver(str(kind), obj)
        return version

    def _deliver(self, kind: str, obj: Obj) -> None:
        try:
            self.on_event(kind, obj)
        except Exception:  # one bad handler call must not stop the watch
            log.exception("watch %s: handler failed on %s %s", self.path, kind,
                          obj.get("metadata", {}).get("name"))
