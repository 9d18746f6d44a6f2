"""`zeroserve autoscaler`: the autoscaler as a cluster Deployment of (usually) two replicas.

Every replica watches ModelServices, Deployments and pods, so a new leader starts with warm
caches. Only the leader runs an `Autoscaler` (a fresh one each time it gains the lease, so no
decision rests on windows it did not observe) and only it writes. Both serve the HTTP API: a
follower answers stats and pokes with 307 to the leader's address from the Lease.

    POST /v1/stats  {"samples": [StatSample fields, "at" in unix seconds]}   bearer token
    POST /v1/poke   {"models": [name, ...]}                                   bearer token
    GET  /status, /healthz, /metrics
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from autoscaler import metrics
from autoscaler.aggregation import StatSample
from autoscaler.backends.k8s_lease import KubernetesLeaseStore
from autoscaler.backends.k8s_render import RenderConfig
from autoscaler.backends.kubernetes import KubernetesBackend, KubernetesConfig
from autoscaler.backends.kubernetes_api import KubeApi, configuration
from autoscaler.leader import ElectionConfig, LeaderElector
from autoscaler.loop import Autoscaler
from zeroserve.spec import ModelService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    namespace: str
    image: str
    identity: str
    address: str                      # http://POD_IP:PORT, where followers send the activators
    token_file: Path | None
    api_server: str | None = None     # None: in-cluster service account
    api_token: str = ""
    host: str = "0.0.0.0"
    port: int = 8081
    lease_name: str = "zeroserve-autoscaler"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    cache_host_path: str = "/var/cache/zeroserve"
    tick_s: float = 2.0
    watch_timeout_s: float = 300.0


class ClusterAutoscaler:
    def __init__(self, config: AutoscalerConfig) -> None:
        self.config = config
        self.api = KubeApi(configuration(config.api_server, config.api_token or None)
                           if config.api_server else configuration())
        self.elector = LeaderElector(
            KubernetesLeaseStore(self.api, config.namespace, config.lease_name),
            ElectionConfig(identity=config.identity, address=config.address,
                           lease_duration_s=config.lease_duration_s,
                           renew_deadline_s=config.renew_deadline_s,
                           retry_period_s=config.retry_period_s),
            on_started=self._on_started, on_stopped=self._on_stopped)
        self.backend = KubernetesBackend(
            self.api, KubernetesConfig(config.namespace,
                                       RenderConfig(config.image, cache_host_path=config.cache_host_path),
                                       watch_timeout_s=config.watch_timeout_s),
            is_leader=self.elector.is_leader)
        self.backend.on_model_services(self._upsert, self._remove)
        self.autoscaler: Autoscaler | None = None
        self.registry = CollectorRegistry()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.port = config.port

    # --- leadership -----------------------------------------------------------------------------

    def _on_started(self) -> None:
        self.autoscaler = Autoscaler(self.backend, tick_s=self.config.tick_s, registry=self.registry)
        for state in list(self.backend.models.values()):
            self.autoscaler.upsert(state.svc)
        self._loop_task = asyncio.create_task(self.autoscaler.run(), name="autoscaler-loop")
        self.backend.resync()

    def _on_stopped(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._loop_task = None
        if self.autoscaler is not None:
            # A follower exports no decisions: they would be stale, and the leader's are the truth.
            metrics.attach(self.autoscaler, self.registry).detach(self.autoscaler)
        self.autoscaler = None

    def _upsert(self, svc: ModelService) -> None:
        if self.autoscaler is not None:
            self.autoscaler.upsert(svc)

    def _remove(self, name: str) -> None:
        self.backend.unregister(name)
        if self.autoscaler is not None:
            self.autoscaler.remove(name)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.backend.start()
        self._tasks.append(asyncio.create_task(self.elector.run(), name="leader-election"))
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, self.config.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("autoscaler %s listening on %s:%d, namespace %s", self.config.identity,
                 self.config.host, self.port, self.config.namespace)

    async def stop(self) -> None:
        log.info("autoscaler %s stopping: releasing the lease", self.config.identity)
        for task in self._tasks:  # the elector releases the lease on its way out
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._on_stopped()
        log.info("autoscaler %s stopping: closing the API", self.config.identity)
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("autoscaler %s stopping: closing watches", self.config.identity)
        await self.backend.close()
        await self.api.close()
        log.info("autoscaler %s stopped", self.config.identity)

    # --- HTTP API -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/stats", self._stats)
        app.router.add_post("/v1/poke", self._poke)
        app.router.add_get("/status", self._status)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if self.config.token_file is None:
            return True
        try:
            token = self.config.token_file.read_text().strip()
        except OSError:
            return False
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def _gate(self, request: web.Request) -> web.Response | Autoscaler:
        """The leader's Autoscaler, or the response that sends the caller elsewhere."""
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.autoscaler is not None and self.elector.is_leader():
            return self.autoscaler
        leader = self.elector.leader_address
        if leader and leader != self.config.address:
            return web.Response(status=307, headers={"Location": leader + request.path})
        return web.json_response({"error": "no leader yet"}, status=503, headers={"Retry-After": "1"})

    async def _stats(self, request: web.Request) -> web.Response:
        target = self._gate(request)
        if isinstance(target, web.Response):
            return target
        try:
            body = await request.json()
            offset = time.monotonic() - time.time()  # samples carry unix time over HTTP
            samples = [StatSample(model=str(s["model"]), activator_id=str(s["activator_id"]),
                                  at=float(s["at"]) + offset,
                                  avg_concurrency=float(s["avg_concurrency"]),
                                  requests=float(s["requests"]), period_s=float(s.get("period_s", 1.0)),
                                  queued=int(s.get("queued", 0)))
                       for s in body["samples"]]
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"bad stats body: {e}"}, status=400)
        target.ingest(samples)
        return web.json_response({"accepted": len(samples)})

    async def _poke(self, request: web.Request) -> web.Response:
        target = self._gate(request)
        if isinstance(target, web.Response):
            return target
        try:
            models = [str(m) for m in (await request.json())["models"]]
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"bad poke body: {e}"}, status=400)
        for model in models:
            target.poke(model)
        return web.json_response({"poked": models})

    async def _status(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"identity": self.config.identity, "leader": self.elector.is_leader(),
                                "leader_address": self.elector.leader_address,
                                "models": self.backend.status()}
        if self.autoscaler is not None:
            body["autoscaler"] = self.autoscaler.status()
        return web.json_response(body)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "leader": self.elector.is_leader()})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _parse(argv: list[str]) -> AutoscalerConfig:
    p = argparse.ArgumentParser(prog="zeroserve autoscaler", description=__doc__.split("\n")[0])
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "zeroserve-system"))
    p.add_argument("--image", required=True, help="the zeroserve image (storage-init, builtin runtimes)")
    p.add_argument("--identity", default=os.environ.get("POD_NAME", socket.gethostname()))
    p.add_argument("--address", help="http://HOST:PORT where this replica's API answers")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--token-file", type=Path, help="bearer token the activators must present")
    p.add_argument("--api-server", help="Kubernetes API URL (default: in-cluster)")
    p.add_argument("--api-token", default="")
    p.add_argument("--lease-name", default="zeroserve-autoscaler")
    p.add_argument("--lease-duration-s", type=float, default=15.0)
    p.add_argument("--renew-deadline-s", type=float, default=10.0)
    p.add_argument("--retry-period-s", type=float, default=2.0)
    p.add_argument("--cache-host-path", default="/var/cache/zeroserve")
    p.add_argument("--tick-s", type=float, default=2.0)
    a = p.parse_args(argv)
    return AutoscalerConfig(
        namespace=a.namespace, image=a.image, identity=a.identity,
        address=a.address or f"http://{socket.gethostname()}:{a.port}", token_file=a.token_file,
        api_server=a.api_server, api_token=a.api_token, host=a.host, port=a.port,
        lease_name=a.lease_name, lease_duration_s=a.lease_duration_s,
        renew_deadline_s=a.renew_deadline_s, retry_period_s=a.retry_period_s,
        cache_host_path=a.cache_host_path, tick_s=a.tick_s)


async def _serve(config: AutoscalerConfig) -> None:
    node = ClusterAutoscaler(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await stop.wait()
    await node.stop()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = _parse(argv)
    except ValueError as e:
        print(f"zeroserve autoscaler: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(config))
    except Exception as e:  # e.g. not in a cluster and no --api-server
        log.error("autoscaler failed: %s", e)
        return 1
    return 0
