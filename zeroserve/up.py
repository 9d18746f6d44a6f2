"""`zeroserve up`: the activator, the autoscaler and the local backend in one process.

This is the one place that wires the parts together. The activator reports load and pokes the
autoscaler by direct calls; the backend pushes ready endpoints straight into the activator's
table. Ctrl-C (or SIGTERM) drains in-flight requests, then stops every replica process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from activator.app import Activator, build_app
from autoscaler.aggregation import StatSample
from autoscaler.api import stats_routes
from autoscaler.backends.base import EndpointSet
from autoscaler.backends.local import LocalBackend
from autoscaler.loop import Autoscaler
from zeroserve.spec import ModelService, SpecError, duplicate_names, load_specs
from zeroserve.worker import endpoint_set_to_json

log = logging.getLogger("zeroserve.up")


@dataclass(frozen=True, slots=True)
class UpConfig:
    files: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9090
    drain_s: float = 30.0
    stop_grace_s: float = 30.0
    cache_dir: Path | None = None
    data_path: str = "fast"       # fast (raw asyncio + httptools) | aiohttp (reference path)
    workers: int = 1              # activator processes sharing the port (SO_REUSEPORT)


class _Target:
    """Where every activator's load reports and pokes go: the main one's by direct calls (it is
    that activator's LoadSink), the workers' through autoscaler.api's stats routes. It feeds the
    autoscaler and tells the backend about demand, for GPU placement."""

    def __init__(self, autoscaler: Autoscaler, backend: LocalBackend) -> None:
        self.autoscaler = autoscaler
        self.backend = backend
        self.queued: dict[str, dict[str, int]] = {}

    def __contains__(self, model: object) -> bool:
        return model in self.autoscaler

    def ingest(self, samples: Iterable[StatSample]) -> None:
        samples = list(samples)
        self.autoscaler.ingest(samples)
        for s in samples:
            self.queued.setdefault(s.model, {})[s.activator_id] = s.queued
            if s.avg_concurrency > 0 or s.requests > 0:
                self.backend.touch(s.model)
            if s.queued:
                self.backend.kick(s.model)

    def report(self, samples: list[StatSample]) -> None:
        self.ingest(samples)

    def poke(self, model: str) -> None:
        self.autoscaler.poke(model)
        self.backend.kick(model)

    def status(self) -> dict[str, Any]:
        return self.autoscaler.status()

    def model_status(self, name: str) -> dict[str, Any] | None:
        return self.autoscaler.model_status(name)

    def queued_elsewhere(self, model: str, here: str) -> int:
        """Requests other activators reported queued for `model` (`here` counts live)."""
        return sum(n for a, n in self.queued.get(model, {}).items() if a != here)


def _gpu_inventory() -> Any | None:
    try:
        from runtime.gpu import GpuInventory
    except ImportError:
        return None
    inventory = GpuInventory()
    return inventory if inventory.devices() else None


def _node_cache(cache_dir: Path | None) -> Any | None:
    try:
        from runtime.storage import NodeCache
    except ImportError:
        return None
    default = NodeCache.default()
    return NodeCache(cache_dir, default.budget_bytes) if cache_dir is not None else default


class Stack:
    """Everything `up` runs, started and stopped in the right order."""

    def __init__(self, services: Iterable[ModelService], config: UpConfig,
                 registry: CollectorRegistry | None = None, gpus: Any | None = None) -> None:
        self.config = config
        self.services = list(services)
        self.registry = registry if registry is not None else REGISTRY
        self.activator: Activator | None = None
        gpus = gpus if gpus is not None else _gpu_inventory()
        if gpus is not None:
            from runtime.gpu import GpuCollector

            self.registry.register(GpuCollector(gpus))
        self.backend = LocalBackend(gpus=gpus, stop_grace_s=config.stop_grace_s,
                                    demand=self._demand, registry=self.registry,
                                    cache=_node_cache(config.cache_dir))
        tick_s = min((s.scaling.tick_s for s in self.services), default=2.0)
        self.autoscaler = Autoscaler(self.backend, registry=self.registry, tick_s=tick_s)
        self.target = _Target(self.autoscaler, self.backend)
        self.activator = Activator(self.services, self.target,
                                   registry=self.registry, phases=self.backend.last_phases)
        self.backend.subscribe(self.activator.table.update)
        self._watchers: set[asyncio.Queue[EndpointSet | None]] = set()
        self.backend.subscribe(self._fan_out)
        self._workers: list[asyncio.subprocess.Process] = []
        self._runners: list[web.AppRunner] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._fast: Any | None = None
        self.port, self.admin_port = config.port, config.admin_port  # the bound ones after start()

    def _demand(self, model: str) -> int:
        if self.activator is None:
            return 0
        load = self.activator.tracker.models.get(model)
        gate = self.activator.gates.get(model)
        local = (load.inflight if load else 0) + (gate.queued if gate else 0)
        return local + self.target.queued_elsewhere(model, self.activator.activator_id)

    def _fan_out(self, model: str, endpoints: EndpointSet) -> None:
        for queue in self._watchers:
            queue.put_nowait(endpoints)

    async def start(self) -> None:
        await self.backend.start()
        for svc in self.services:
            self.backend.register(svc)
            self.autoscaler.upsert(svc)
        self._loop_task = asyncio.create_task(self.autoscaler.run(), name="autoscaler")
        assert self.activator is not None
        if self.config.data_path == "fast":
            from activator.fastpath import FastPath

            self._fast = FastPath(self.activator)
            server = await self._fast.start(self.config.host, self.config.port,
                                            reuse_port=self.config.workers > 1)
            # uvloop's Server is no asyncio.Server subclass, but it has the same sockets.
            self.port = cast(asyncio.Server, server).sockets[0].getsockname()[1]
        else:
            runner = web.AppRunner(build_app(self.activator), handler_cancellation=True,
                                   access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self.config.host, self.config.port, backlog=4096).start()
            self._runners.append(runner)
            self.port = runner.addresses[0][1]
        admin = web.AppRunner(self._admin_app(), access_log=None)
        await admin.setup()
        await web.TCPSite(admin, self.config.admin_host, self.config.admin_port).start()
        self._runners.append(admin)
        self.admin_port = admin.addresses[0][1]
        for index in range(1, self.config.workers):
            await self._start_worker(index)

    async def _start_worker(self, index: int) -> None:
        argv = [sys.executable, "-m", "zeroserve.worker", "--admin",
                f"http://{self.config.admin_host}:{self.admin_port}",
                "--host", self.config.host, "--port", str(self.port),
                "--index", str(index), "--drain", str(self.config.drain_s)]
        for f in self.config.files:
            argv += ["-f", str(f)]
        self._workers.append(await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL))

    async def stop(self) -> None:
        assert self.activator is not None
        for proc in self._workers:
            if proc.returncode is None:
                proc.terminate()       # each worker drains its own requests
        for queue in self._watchers:
            queue.put_nowait(None)     # end the endpoint streams
        if self._runners or (self._fast is not None and self._fast.server is not None):
            log.info("draining in-flight requests (up to %.0fs)", self.config.drain_s)
            await self.activator.drain(self.config.drain_s)
        if self._fast is not None:
            await self._fast.close()
        for proc in self._workers:
            try:
                await asyncio.wait_for(proc.wait(), self.config.drain_s + 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.backend.close()
        for runner in reversed(self._runners):
            await runner.cleanup()

    def status(self) -> dict[str, Any]:
        assert self.activator is not None
        scaler = self.autoscaler.status().get("models", {})
        backend = self.backend.status()
        activator = self.activator.status()
        models: dict[str, Any] = {}
        for svc in self.services:
            name = svc.name
            b = backend.get(name, {})
            a = activator.get(name, {})
            models[name] = {
                **scaler.get(name, {}),
                "ready": b.get("ready", 0),
                "backend_desired": b.get("desired", 0),
                "inflight": a.get("inflight", 0),
                "queued": a.get("queued", 0),
                "replicas": b.get("replicas", []),
                "pending": b.get("pending"),
                "crashes": b.get("crashes", 0),
                "last_failure": b.get("last_failure"),
                "last_cold_start": b.get("last_cold_start", {}),
                "last_cold_start_s": a.get("last_cold_start_s"),
            }
        gpus = {str(k): v for k, v in self.backend.gpu_assignments().items()}
        activators = sorted({self.activator.activator_id}
                            | {a for per in self.target.queued.values() for a in per})
        return {"models": models, "gpus": gpus, "activators": activators,
                "workers": 1 + len(self._watchers),
                "pool": self.backend.pool_status()}

    def _admin_app(self) -> web.Application:
        app = web.Application()

        async def status(request: web.Request) -> web.Response:
            return web.json_response(self.status(), dumps=lambda o: json.dumps(o, default=str))

        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def watch(request: web.Request) -> web.StreamResponse:
            # One JSON line per EndpointSet: all current ones first, then every change.
            queue: asyncio.Queue[EndpointSet | None] = asyncio.Queue()
            for name in self.backend.models:
                queue.put_nowait(self.backend.endpoints(name))
            self._watchers.add(queue)
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            try:
                while (eps := await queue.get()) is not None:
                    await resp.write(json.dumps(endpoint_set_to_json(eps)).encode() + b"\n")
            finally:
                self._watchers.discard(queue)
            return resp

        app.router.add_routes(stats_routes(lambda request: self.target))
        app.router.add_get("/v1/endpoints/watch", watch)
        app.router.add_get("/status", status)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        return app


async def serve(services: list[ModelService], config: UpConfig) -> None:
    stack = Stack(services, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: a closed terminal must drain and stop the replicas like Ctrl-C does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stack.start()
    except BaseException:
        await stack.stop()   # a port in use must not leave replicas or sessions behind
        raise
    names = ", ".join(s.name for s in services)
    print(f"zeroserve up: {len(services)} model(s) ({names}) on http://{config.host}:{stack.port}"
          f" — status http://{config.admin_host}:{stack.admin_port}/status", flush=True)
    try:
        await stop.wait()
    finally:
        print("zeroserve up: stopping (draining requests, then replicas)", flush=True)
        await stack.stop()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="zeroserve up", description=__doc__)
    p.add_argument("-f", "--file", action="append", required=True, type=Path,
                   help="ModelService YAML (repeatable; several documents per file allowed)")
    p.add_argument("--host", default="127.0.0.1", help="address the activator listens on")
    p.add_argument("--port", type=int, default=8080, help="activator port (default 8080)")
    p.add_argument("--admin-host", default="127.0.0.1")
    p.add_argument("--admin-port", type=int, default=9090, help="/metrics and /status port")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to drain on shutdown")
    p.add_argument("--stop-grace", type=float, default=30.0,
                   help="seconds a replica gets between SIGTERM and SIGKILL")
    p.add_argument("--cache-dir", type=Path, help="node cache (default $ZEROSERVE_CACHE_DIR)")
    p.add_argument("--workers", type=int, default=1,
                   help="activator processes sharing the port (default 1; try the core count)")
    p.add_argument("--data-path", choices=("fast", "aiohttp"), default="fast",
                   help="the activator's HTTP implementation (default fast)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def _argument_errors(args: argparse.Namespace) -> list[str]:
    errors = [f"--{flag} = {value}, must be >= 0" for flag, value in
              (("drain", args.drain), ("stop-grace", args.stop_grace)) if not value >= 0]
    errors += [f"--{flag} = {value}, must be a port (0-65535; 0 picks a free one)" for flag, value in
               (("port", args.port), ("admin-port", args.admin_port)) if not 0 <= value <= 65535]
    if args.workers < 1:
        errors.append(f"--workers = {args.workers}, must be >= 1")
    elif args.workers > 1 and args.data_path != "fast":
        errors.append("--workers > 1 needs the fast data path (--data-path fast)")
    return errors


def local_problems(svc: ModelService) -> list[str]:
    """What a valid spec asks of the local backend that it cannot do."""
    if svc.runtime.kind == "command" and not svc.runtime.command:
        return [f"model {svc.name}: spec.runtime has an image but no command; the local backend "
                "runs processes, not images (give runtime.command, or deploy it with the "
                "kubernetes backend)"]
    return []


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services: list[ModelService] = []
    errors = _argument_errors(args)
    defined: dict[tuple[str, str], str] = {}
    for path in args.file:
        try:
            loaded = load_specs(path)
        except SpecError as e:
            errors += [f"{path}: {line}" for line in e.errors]
            continue
        # One activator serves every model by name, whatever its namespace.
        problems = duplicate_names(loaded, defined, str(path), by_namespace=False)
        problems += [p for svc in loaded for p in local_problems(svc)]
        errors += [f"{path}: {line}" for line in problems]
        services += loaded
    if errors:
        for line in errors:
            print(f"zeroserve up: {line}", file=sys.stderr)
        return 2
    config = UpConfig(files=tuple(args.file), host=args.host, port=args.port,
                      admin_host=args.admin_host, admin_port=args.admin_port, drain_s=args.drain,
                      stop_grace_s=args.stop_grace, cache_dir=args.cache_dir,
                      data_path=args.data_path, workers=args.workers)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(services, config))
    except OSError as e:
        print(f"zeroserve up: {e}", file=sys.stderr)
        return 1
    return 0
