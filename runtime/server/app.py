"""The model server: the aiohttp app factory and the process lifecycle (listen, load, drain)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from runtime.gpu import GpuInventory
from runtime.server import openai_api, v1, v2
from runtime.server.context import HANDLER_ARGS, HOST, METRICS, Handler
from runtime.server.errors import NoRoute
from runtime.server.host import ModelHost
from runtime.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

def is_openai_path(path: str) -> bool:
    """Every /v1/ path but KServe v1's /v1/models... is the OpenAI API's (embeddings, responses, audio,
    ...): an unknown one there gets an OpenAI-shaped error, which the OpenAI SDKs can read."""
    return path.startswith("/v1/") and not path.startswith("/v1/models")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    drain_grace_s: float = 30.0
    max_body_bytes: int = 100 * 1024 * 1024


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    # Rendering reads NVML; keep that off the event loop in case the driver is slow to answer.
    body = await asyncio.to_thread(metrics.render)
    return web.Response(body=body, headers={"Content-Type": metrics.content_type})


@web.middleware
async def unknown_routes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405 pages are text; clients of every protocol here expect JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        error = NoRoute(f"{e.reason}: {request.method} {request.path}")
        render = openai_api.render_error if is_openai_path(request.path) else v2.render_error
        response = render(error)
        response.set_status(e.status, e.reason)
        return response


def create_app(
    host: ModelHost, gpus: GpuInventory | None = None, *, max_body_bytes: int = 100 * 1024 * 1024
) -> web.Application:
    app = web.Application(
        client_max_size=max_body_bytes, middlewares=[unknown_routes], handler_args=HANDLER_ARGS
    )
    app[HOST] = host
    app[METRICS] = ServerMetrics(host, gpus or GpuInventory())
    v2.add_routes(app)
    v1.add_routes(app)
    openai_api.add_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    return app


@contextlib.asynccontextmanager
async def listening(runner: web.AppRunner, host: ModelHost, bind_host: str,
                    port: int) -> AsyncIterator[tuple[asyncio.Event, int]]:
    """Bind `runner` and yield (the stop event SIGTERM/SIGINT set, the bound port); on exit remove
    the handlers and clean up the runner. The handlers go in before the port is bound and announced:
    whoever reads "listening on" may send SIGTERM at once (a backend scaling down a replica that just
    started), and that signal's default action would kill the process (-15) instead of a drain."""
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, bind_host, port, backlog=1024, reuse_address=True)
        await site.start()
        host.times.listening_unix = time.time()
        yield stop, runner.addresses[0][1] if runner.addresses else port
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def serve(host: ModelHost, options: ServeOptions, gpus: GpuInventory | None = None) -> int:
    """Listen at once, load, serve until SIGTERM/SIGINT, then drain. Returns the exit code."""
    app = create_app(host, gpus, max_body_bytes=options.max_body_bytes)
    # The drain grace below is the bound on in-flight work; aiohttp's own wait on top stays short.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.25)
    try:
        async with listening(runner, host, options.host, options.port) as (stop, port):
            log.info("listening on http://%s:%d model=%s (loading)", options.host, port, host.name)
            return await _serve_until_stopped(app, host, options, stop)
    finally:
        log.info("stopped model=%s served=%d", host.name, host.served)


async def _serve_until_stopped(
    app: web.Application, host: ModelHost, options: ServeOptions, stop: asyncio.Event
) -> int:
    """Load, serve until `stop` is set, then drain. Returns the exit code."""
    load = asyncio.create_task(host.load())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({load, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if load.done():
            if load.exception() is not None:
                log.error("load failed model=%s: %r", host.name, load.exception())
                return 1
            app[METRICS].record_startup()
            t = host.times.as_json()
            log.info(
                "model %s ready in %.3f s (start %.3f, load %.3f) imports %.3f s",
                host.name,
                t["ready_s"],
                t["listening_s"],
                t["load_s"],
                t["imports_s"],
            )
            await stopping
        log.info(
            "draining model=%s in_flight=%d grace=%.1fs", host.name, host.in_flight, options.drain_grace_s
        )
        host.start_drain()
        if not load.done():
            load.cancel()
        if not await host.wait_idle(options.drain_grace_s):
            log.warning("drain grace over with %d requests in flight model=%s", host.in_flight, host.name)
        return 0
    finally:
        for task in (load, stopping):
            task.cancel()
        await asyncio.gather(load, stopping, return_exceptions=True)
