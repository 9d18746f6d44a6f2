"""The activator in a cluster: where models' ready pods are, and where load reports go.

- `ClusterDiscovery` watches EndpointSlices (ready pods of each model's Service) and ModelServices
  (routing, queue limits) with plain aiohttp — the activator carries no Kubernetes client. A
  watch resumes from its last resourceVersion and lists again after 410 Gone or an error.
- `HttpLoadSink` sends load reports and pokes to the autoscaler over HTTP with a bearer token read
  from a Secret-mounted file. A follower autoscaler answers 307 with the leader's address, which
  is then used directly. Sending never blocks the data path: when the autoscaler is down, reports
  are dropped (they are stale a second later anyway), pokes are retried, and warm traffic is served.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from activator.endpoints import EndpointTable
from autoscaler.aggregation import StatSample
from autoscaler.backends.base import Endpoint, EndpointSet
from zeroserve.spec import API_VERSION, KIND, ModelService, SpecError, parse_specs

log = logging.getLogger(__name__)

Obj = dict[str, Any]
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_NAME = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class ApiServer:
    url: str
    token_file: Path | None = None
    ca_file: Path | None = None
    token: str = ""

    @classmethod
    def in_cluster(cls, sa_dir: Path = SA_DIR) -> ApiServer:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", sa_dir / "token", sa_dir / "ca.crt")

    def headers(self) -> dict[str, str]:
        # Re-read each time: the kubelet rotates projected service-account tokens.
        token = self.token_file.read_text().strip() if self.token_file else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        return _ssl_context(str(self.ca_file)) if self.ca_file else True


@functools.lru_cache(maxsize=4)
def _ssl_context(ca_file: str) -> ssl.SSLContext:
    # Built once: loading the CA bundle for every list and watch would cost a file read and a parse.
    return ssl.create_default_context(cafile=ca_file)


class _Watch:
    """List, then watch from the listed version; list again after 410 Gone or a failure."""

    def __init__(self, session: aiohttp.ClientSession, api: ApiServer, path: str,
                 on_sync: Callable[[dict[str, Obj]], None], *, timeout_s: float = 300.0) -> None:
        self.session, self.api, self.path = session, api, path
        self.on_sync = on_sync
        self.timeout_s = timeout_s
        self.objects: dict[str, Obj] = {}
        self.lists = 0

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                version = await self._list()
                delay = 0.5
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("watch %s failed: %s; listing again in %.1fs", self.path, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _list(self) -> str:
        async with self.session.get(self.api.url + self.path, headers=self.api.headers(),
                                    ssl=self.api.ssl_context()) as resp:
            if resp.status != 200:
                raise RuntimeError(f"list {self.path}: HTTP {resp.status}")
            data = await resp.json()
        self.lists += 1
        self.objects = {o["metadata"]["name"]: o for o in data.get("items") or []}
        self.on_sync(self.objects)
        return str(data["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        """Follow the stream; the version to resume from, or '' to list again."""
        query = (f"?watch=true&allowWatchBookmarks=true&resourceVersion={quote(version)}"
                 f"&timeoutSeconds={int(self.timeout_s)}")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.timeout_s + 30)
        async with self.session.get(self.api.url + self.path + query, headers=self.api.headers(),
                                    ssl=self.api.ssl_context(), timeout=timeout) as resp:
            if resp.status == 410:
                return ""
            if resp.status != 200:
                raise RuntimeError(f"watch {self.path}: HTTP {resp.status}")
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return ""
                    raise RuntimeError(f"watch {self.path}: {obj.get('message')}")
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self.objects.pop(name, None)
                else:
                    self.objects[name] = obj
                self.on_sync(self.objects)
        return version


def slice_endpoints(slices: list[Obj]) -> tuple[Endpoint, ...]:
    """Ready, not terminating endpoints of a Service's EndpointSlices."""
    out = []
    for s in slices:
        ports = s.get("ports") or []
        port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
        if port is None and ports:
            port = ports[0].get("port")
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            if cond.get("ready") is False or cond.get("terminating") is True:
                continue  # an absent `ready` means ready, per the EndpointSlice API
            ref = (ep.get("targetRef") or {}).get("name")
            for address in ep.get("addresses") or []:
                out.append(Endpoint(f"{ref or address}:{port}", address, int(port)))
    return tuple(sorted(out, key=lambda e: e.id))


class ClusterDiscovery:
    def __init__(self, session: aiohttp.ClientSession, api: ApiServer, namespace: str,
                 table: EndpointTable, on_services: Callable[[list[ModelService]], None], *,
                 watch_timeout_s: float = 300.0) -> None:
        self.table = table
        self.on_services = on_services
        self.services: dict[str, ModelService] = {}
        self._version = 0
        self._published: dict[str, tuple[Endpoint, ...]] = {}
        self.slices = _Watch(session, api, f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                             self._on_slices, timeout_s=watch_timeout_s)
        self.models = _Watch(session, api, f"/apis/serving.zeroserve.io/v1alpha1/namespaces/{namespace}"
                             "/modelservices", self._on_model_services, timeout_s=watch_timeout_s)

    async def run(self) -> None:
        await asyncio.gather(self.models.run(), self.slices.run())

    def _on_model_services(self, objects: dict[str, Obj]) -> None:
        fresh: dict[str, ModelService] = {}
        for name, obj in objects.items():
            doc = {"apiVersion": API_VERSION, "kind": KIND, "spec": obj.get("spec") or {},
                   "metadata": {k: v for k, v in obj["metadata"].items()
                                if k in ("name", "namespace", "labels", "annotations")}}
            try:
                fresh[name] = parse_specs(json.dumps(doc))[0]
            except SpecError as e:
                log.warning("modelservice %s is invalid, not routed: %s", name, "; ".join(e.errors))
        if fresh != self.services:
            self.services = fresh
            self.on_services(list(fresh.values()))
            self._on_slices(self.slices.objects)

    def _on_slices(self, objects: dict[str, Obj]) -> None:
        by_model: dict[str, list[Obj]] = {name: [] for name in self.services}
        for obj in objects.values():
            model = (obj["metadata"].get("labels") or {}).get(SERVICE_NAME)
            if model in by_model:
                by_model[model].append(obj)
        for model, slices in by_model.items():
            ready = slice_endpoints(slices)
            if self._published.get(model) == ready:
                continue
            self._published[model] = ready
            self._version += 1
            self.table.update(model, EndpointSet(model, ready, self._version))


class ReportRejected(RuntimeError):
    """The autoscaler answered a report with a client error: the body, not the link, is at fault."""


class HttpLoadSink:
    """`LoadSink` over HTTP to the autoscaler leader."""

    def __init__(self, base_url: str, token_file: Path | None, *, timeout_s: float = 2.0,
                 max_pending: int = 10_000) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.leader_url = ""
        self._samples: list[StatSample] = []
        self._pokes: set[str] = set()
        self._report_due = False
        self._wake = asyncio.Event()
        self.sent = 0
        self.failures = 0
        self._offset_s = time.time() - time.monotonic()  # samples carry monotonic time

    def report(self, samples: list[StatSample]) -> None:
        # Sent even when empty: an empty report still tells the autoscaler that an activator is
        # alive and counting, which is what lets it scale an idle model down.
        self._report_due = True
        self._keep(self._samples + samples)
        self._wake.set()

    def _keep(self, samples: list[StatSample]) -> None:
        """Pending samples, oldest first, bounded: past max_pending the oldest are dropped."""
        self._samples = samples[max(0, len(samples) - self.max_pending):]

    def poke(self, model: str) -> None:
        self._pokes.add(model)
        self._wake.set()

    def _headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip() if self.token_file else ""
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _post(self, session: aiohttp.ClientSession, path: str, body: Obj) -> None:
        base = self.leader_url or self.base_url
        for _ in range(2):  # at most one redirect, to the leader
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with session.post(base + path, json=body, headers=self._headers(),
                                    allow_redirects=False, timeout=timeout) as resp:
                if resp.status in (307, 308) and resp.headers.get("Location"):
                    parts = urlsplit(resp.headers["Location"])
                    base = self.leader_url = f"{parts.scheme}://{parts.netloc}"
                    continue
                if resp.status in (400, 413, 422):
                    raise ReportRejected(f"POST {path}: HTTP {resp.status}: {await resp.text()}")
                if resp.status >= 300:
                    raise RuntimeError(f"POST {path}: HTTP {resp.status}")
                return
        raise RuntimeError(f"POST {path}: redirected twice")

    async def run(self, session: aiohttp.ClientSession) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            samples, self._samples = self._samples, []
            pokes, self._pokes = sorted(self._pokes), set()
            due, self._report_due = self._report_due, False
            try:
                if due or samples:
                    body = {"samples": [{**asdict(s), "at": s.at + self._offset_s} for s in samples]}
                    await self._post(session, "/v1/stats", body)
                    samples, due = [], False  # delivered: a failed poke must not resend them
                if pokes:
                    await self._post(session, "/v1/poke", {"models": pokes})
                self.sent += 1
                delay = 0.2
            except ReportRejected as e:  # the body itself is refused: sending it again cannot help
                self.failures += 1
                log.warning("autoscaler refused a load report (%d samples dropped): %s", len(samples), e)
            except (aiohttp.ClientError, TimeoutError, RuntimeError, OSError) as e:
                self.failures += 1
                if self.failures == 1 or self.failures % 60 == 0:
                    log.warning("autoscaler unreachable (%d failures): %s; serving warm traffic "
                                "meanwhile", self.failures, e)
                self.leader_url = ""  # the leader may have moved: ask the Service again
                self._pokes.update(pokes)  # a cold request depends on its poke: try again
                # Samples carry their own time, so the new leader files them in the right seconds;
                # ones older than its window it drops itself. Oldest first, within the bound.
                self._keep(samples + self._samples)
                self._report_due = self._report_due or due
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if self._pokes or self._samples:
                    self._wake.set()
