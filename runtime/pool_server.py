"""The warm pool process's HTTP routes (/pool/status, /pool/load, /pool/unload) and its server entry.

Besides these routes the process serves the model server's own (runtime.server.app), which answer
for the loaded model. Entry points: `zeroserve serve --runtime hf --pool` and `python -m runtime.pool`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime.parking import ParkingLot
from runtime.pool_process import PoolBusy, WarmPool
from runtime.server.app import ServeOptions, create_app, listening
from runtime.server.context import HOST, json_response
from runtime.server.hf import HFModel
from runtime.server.host import ModelHost
from runtime.server.model import ModelConfig

log = logging.getLogger(__name__)

POOL = web.AppKey("pool", WarmPool)


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


async def status_handler(request: web.Request) -> web.Response:
    return json_response(request.app[POOL].status())


async def load_handler(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body must be JSON")
    if not isinstance(body, dict) or not isinstance(body.get("model_dir"), str) \
            or not isinstance(body.get("model_name"), str) or not body["model_name"]:
        return _error(400, "body must be {\"model_dir\": str, \"model_name\": str}")
    model_dir = Path(body["model_dir"])
    if not await asyncio.to_thread(model_dir.is_dir):
        return _error(404, f"model_dir {model_dir} is not a directory")
    try:
        return json_response(await request.app[POOL].load(model_dir, body["model_name"]))
    except PoolBusy as e:
        return _error(409, str(e))
    except Exception as e:   # a bad checkpoint: the process stays idle and usable
        return _error(500, f"load failed: {type(e).__name__}: {e}")


async def unload_handler(request: web.Request) -> web.Response:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        return _error(400, "body must be JSON")
    park = body.get("park", False) if isinstance(body, dict) else None
    if not isinstance(park, bool):
        return _error(400, "park must be a boolean")
    try:
        return json_response(await request.app[POOL].unload(park=park))
    except PoolBusy as e:
        return _error(409, str(e))


def add_routes(app: web.Application, pool: WarmPool) -> None:
    app[POOL] = pool
    app.router.add_get("/pool/status", status_handler)
    app.router.add_post("/pool/load", load_handler)
    app.router.add_post("/pool/unload", unload_handler)


def create_pool_app(pool: WarmPool, *, max_body_bytes: int = 100 * 1024 * 1024) -> web.Application:
    app = create_app(pool.host, max_body_bytes=max_body_bytes)
    assert app[HOST] is pool.host
    add_routes(app, pool)
    return app


@dataclass(frozen=True, slots=True)
class PoolOptions(ServeOptions):
    """A model server's options, plus the host memory that parked weights may take."""

    park_budget_bytes: int | None = None     # None: $ZEROSERVE_PARK_BUDGET_BYTES or 1/4 of RAM


async def serve_pool(options: PoolOptions, started_unix: float | None = None) -> int:
    """Listen at once, warm in the background, serve loads until SIGTERM/SIGINT, then drain."""
    from runtime.parking import default_budget_bytes
    from runtime.server.host import StartupTimes

    now = time.time()
    host = ModelHost(HFModel(ModelConfig(name="")), StartupTimes(started_unix or now, now))
    budget = default_budget_bytes() if options.park_budget_bytes is None else options.park_budget_bytes
    pool = WarmPool(host, ParkingLot(budget), drain_grace_s=options.drain_grace_s)
    app = create_pool_app(pool, max_body_bytes=options.max_body_bytes)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    async with listening(runner, host, options.host, options.port) as (stop, port):
        log.info("pool process listening on http://%s:%d (warming)", options.host, port)
        warm = asyncio.create_task(pool.warm())
        try:
            await stop.wait()
            host.start_drain()
            if not await host.wait_idle(options.drain_grace_s):
                log.warning("drain grace over with %d requests in flight", host.in_flight)
            return 0
        finally:
            warm.cancel()
            await asyncio.gather(warm, return_exceptions=True)


def run_pool(options: PoolOptions, started_unix: float | None = None) -> int:
    """Blocking entry for `zeroserve serve --runtime hf --pool` (and `python -m runtime.pool`)."""
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve_pool(options, started_unix))
    except OSError as e:
        log.error("cannot serve: %s", e)
        return 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m runtime.pool", description="warm pool process (hf)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    p.add_argument("--drain-grace-s", type=float, default=30.0)
    p.add_argument("--park-budget-bytes", type=int, default=None)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run_pool(PoolOptions(host=args.host, port=args.port, drain_grace_s=args.drain_grace_s,
                                park_budget_bytes=args.park_budget_bytes))

