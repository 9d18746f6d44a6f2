"""`zeroserve activator`: the activator as a cluster Deployment.

Endpoints come from EndpointSlices and models from ModelServices (`activator.discovery`); load
goes to the autoscaler leader over HTTP. SIGTERM stops readiness, drains in-flight and queued
requests up to `--drain-grace-s`, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from activator.app import Activator, build_app
from activator.discovery import ApiServer, ClusterDiscovery, HttpLoadSink
from activator.endpoints import EndpointTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActivatorConfig:
    namespace: str
    autoscaler_url: str
    api: ApiServer
    token_file: Path | None = None
    activator_id: str = ""
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 0          # 0: no separate metrics listener
    drain_grace_s: float = 30.0
    watch_timeout_s: float = 300.0


class ClusterActivator:
    """One activator pod's worth of parts, startable in-process (tests) or from `main`."""

    def __init__(self, config: ActivatorConfig) -> None:
        self.config = config
        self.registry = CollectorRegistry()
        self.table = EndpointTable()
        self.sink = HttpLoadSink(config.autoscaler_url, config.token_file)
        self.activator = Activator([], self.sink, table=self.table, registry=self.registry,
                                   activator_id=config.activator_id or None)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.discovery: ClusterDiscovery | None = None
        self.port = config.port

    async def start(self) -> None:
        cfg = self.config
        self._session = aiohttp.ClientSession()
        self.discovery = ClusterDiscovery(self._session, cfg.api, cfg.namespace, self.table,
                                          self.activator.set_services,
                                          watch_timeout_s=cfg.watch_timeout_s)
        self._tasks = [asyncio.create_task(self.discovery.run(), name="activator-discovery"),
                       asyncio.create_task(self.sink.run(self._session), name="activator-sink")]
        runner = web.AppRunner(build_app(self.activator), handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runners.append(runner)
        if cfg.metrics_port:
            metrics = web.Application()
            metrics.router.add_get("/metrics", self._metrics)
            mrunner = web.AppRunner(metrics)
            await mrunner.setup()
            await web.TCPSite(mrunner, cfg.host, cfg.metrics_port).start()
            self._runners.append(mrunner)
        log.info("activator %s listening on %s:%d (namespace %s)", self.activator.activator_id,
                 cfg.host, self.port, cfg.namespace)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        await self.activator.drain(self.config.drain_grace_s)
        for runner in reversed(self._runners):
            await runner.cleanup()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="zeroserve activator", description=__doc__.split("\n")[0])
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "zeroserve-system"))
    p.add_argument("--id", default=os.environ.get("POD_NAME", socket.gethostname()))
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--metrics-port", type=int, default=9090)
    p.add_argument("--autoscaler-url", default="http://zeroserve-autoscaler:8081")
    p.add_argument("--token-file", type=Path, help="bearer token for the autoscaler's stats API")
    p.add_argument("--api-server", help="Kubernetes API URL (default: in-cluster)")
    p.add_argument("--api-token", default="", help="API token when --api-server is given")
    p.add_argument("--drain-grace-s", type=float, default=30.0)
    return p.parse_args(argv)


async def _serve(config: ActivatorConfig) -> None:
    act = ClusterActivator(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await act.start()
    await stop.wait()
    log.info("activator: draining (up to %.0fs)", config.drain_grace_s)
    await act.stop()


def main(argv: list[str]) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        api = (ApiServer(args.api_server, token=args.api_token) if args.api_server
               else ApiServer.in_cluster())
    except KeyError:
        print("zeroserve activator: not in a cluster; pass --api-server", file=sys.stderr)
        return 2
    config = ActivatorConfig(namespace=args.namespace, autoscaler_url=args.autoscaler_url, api=api,
                             token_file=args.token_file, activator_id=args.id, host=args.host,
                             port=args.port, metrics_port=args.metrics_port,
                             drain_grace_s=args.drain_grace_s)
    asyncio.run(_serve(config))
    return 0
