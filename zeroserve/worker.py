"""An extra activator process of `zeroserve up --workers N`, sharing the port (SO_REUSEPORT).

The main process owns the autoscaler and the replicas. A worker is a whole activator (its own gates,
queues and load tracker) that learns ready endpoints from the main process's admin API
(`GET /v1/endpoints/watch`, one JSON line per change) and reports its load and pokes back over HTTP
(`POST /v1/stats`, `POST /v1/poke`), where the autoscaler sums it with every other worker's, as it
does for several activator pods in a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from activator.app import Activator
from activator.discovery import HttpLoadSink
from activator.fastpath import FastPath
from autoscaler.backends.base import Endpoint, EndpointSet
from zeroserve.spec import SpecError, load_specs

log = logging.getLogger("zeroserve.worker")


def endpoint_set_to_json(eps: EndpointSet) -> dict[str, object]:
    return {"model": eps.model, "version": eps.version,
            "ready": [{"id": e.id, "host": e.host, "port": e.port} for e in eps.ready]}


def endpoint_set_from_json(data: dict[str, object]) -> EndpointSet:
    ready = data.get("ready")
    assert isinstance(ready, list)
    version = data.get("version", 0)
    return EndpointSet(str(data["model"]),
                       tuple(Endpoint(str(e["id"]), str(e["host"]), int(e["port"])) for e in ready),
                       int(version) if isinstance(version, int) else 0)


async def watch_endpoints(session: aiohttp.ClientSession, admin_url: str,
                          activator: Activator) -> None:
    """Follow the main process's endpoint stream, reconnecting with backoff."""
    delay = 0.1
    while True:
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
            async with session.get(admin_url + "/v1/endpoints/watch", timeout=timeout) as resp:
                resp.raise_for_status()
                delay = 0.1
                async for line in resp.content:
                    if line.strip():
                        eps = endpoint_set_from_json(json.loads(line))
                        activator.table.update(eps.model, eps)
        except (aiohttp.ClientError, OSError, ValueError) as e:
            log.warning("endpoint stream from %s lost (%s); retrying in %.1fs", admin_url, e, delay)
        await asyncio.sleep(delay)
        delay = min(5.0, delay * 2)


async def run_worker(files: list[Path], admin_url: str, host: str, port: int, index: int,
                     drain_s: float) -> int:
    services = [svc for f in files for svc in load_specs(f)]
    sink = HttpLoadSink(admin_url, None)
    activator = Activator(services, sink, registry=CollectorRegistry(),
                          activator_id=f"{os.uname().nodename}-w{index}-{os.getpid()}")
    fast = FastPath(activator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as session:
        await fast.start(host, port, reuse_port=True)
        # Listening first, then attach: the main process counts attached endpoint streams as
        # workers that serve.
        tasks = [asyncio.create_task(watch_endpoints(session, admin_url, activator)),
                 asyncio.create_task(sink.run(session))]
        log.info("worker %d serving on %s:%d", index, host, port)
        try:
            await stop.wait()
        finally:
            await activator.drain(drain_s)
            await fast.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zeroserve.worker")
    p.add_argument("-f", "--file", action="append", required=True, type=Path)
    p.add_argument("--admin", required=True, help="the main process's admin URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--index", type=int, default=1)
    p.add_argument("--drain", type=float, default=30.0)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        return asyncio.run(run_worker(args.file, args.admin.rstrip("/"), args.host, args.port,
                                      args.index, args.drain))
    except SpecError as e:
        print("\n".join(e.errors), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
