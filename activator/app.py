"""The activator: an aiohttp app every request passes through.

A request is routed to a model, takes a replica slot from the model's gate (at once when warm;
queued, with the autoscaler poked, when cold or saturated), is forwarded, and its response is
streamed back. Errors become responses in exactly one place (`activator.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from activator.endpoints import EndpointTable
from activator.errors import (
    ActivatorError,
    BadRequest,
    BodyTooLarge,
    Shape,
    ShuttingDown,
    UnknownModel,
    UpstreamFailed,
    error_response,
)
from activator.http1_limits import AIOHTTP_HANDLER_ARGS, limit_head, quiet_malformed_requests
from activator.metrics import ActivatorMetrics
from activator.proxy import BUFFER_BODY_BYTES, relay, send, stream_body, upstream_headers
from activator.queue import ModelGate
from activator.routing import BODY_PREFIX_BYTES, MODEL_LIST_PATHS, Router, model_from_body
from activator.stats import LoadSink, LoadTracker
from autoscaler.backends.base import EndpointSet
from zeroserve.spec import ModelService

log = logging.getLogger(__name__)

# Methods a replica can safely see twice when the first attempt never reached it.
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE"})


class Activator:
    def __init__(self, services: Iterable[ModelService], sink: LoadSink, *,
                 table: EndpointTable | None = None, activator_id: str | None = None,
                 registry: CollectorRegistry | None = None, domain: str = "",
                 upstream_timeout_s: float = 600.0, report_period_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 phases: Callable[[str], dict[str, float]] | None = None) -> None:
        self.activator_id = activator_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock
        self.domain = domain
        self.upstream_timeout_s = upstream_timeout_s
        self.report_period_s = report_period_s
        self.metrics = ActivatorMetrics(registry if registry is not None else REGISTRY)
        self.tracker = LoadTracker(sink, self.activator_id, clock=clock)
        self.table = table or EndpointTable()
        self.services: dict[str, ModelService] = {}
        self.gates: dict[str, ModelGate] = {}
        self.router = Router([])
        self.session: aiohttp.ClientSession | None = None
        self.closing = False
        self._phases = phases
        self.set_services(services)
        self.table.listen(self._on_endpoints)

    # --- configuration ------------------------------------------------------------------------

    def set_services(self, services: Iterable[ModelService]) -> None:
        fresh = {s.name: s for s in services}
        for name in list(self.gates):
            if name not in fresh:
                self.gates.pop(name).close()
        for name, svc in fresh.items():
            gate = self.gates.get(name)
            if gate is None or gate.capacity != svc.scaling.container_concurrency:
                new = ModelGate(name, capacity=svc.scaling.container_concurrency,
                                max_queued=svc.queue.max_queued, timeout_s=svc.queue.timeout_s,
                                poke=self.tracker.poke, clock=self.clock)
                self.gates[name] = new
                new.update(self.table.get(name))
                self.tracker.queued[name] = lambda g=new: g.queued  # type: ignore[misc]
            else:
                gate.max_queued = svc.queue.max_queued
                gate.timeout_s = svc.queue.timeout_s
        self.services = fresh
        self.router = Router(((s.name, s.namespace, s.hosts) for s in fresh.values()), self.domain)

    def _on_endpoints(self, model: str, endpoints: EndpointSet) -> None:
        gate = self.gates.get(model)
        if gate is not None:
            was_cold = gate.cold_since is not None
            gate.update(endpoints)
            if was_cold and gate.cold_since is None:
                # Once per scale from zero that requests waited for, not once per response.
                self.metrics.cold_starts.labels(model).inc()

    def inflight(self) -> int:
        return sum(load.inflight for load in self.tracker.models.values())

    # --- request handling ---------------------------------------------------------------------

    def local_endpoint(self, method: str, path: str) -> tuple[int, bytes] | None:
        """Requests the activator answers itself, as the server clients think they talk to:
        its health, the server metadata and the union of model lists. None: proxy it."""
        if method not in ("GET", "HEAD"):
            return None
        if path == "/healthz" or path == "/v2/health/live":
            return (503, b'{"status": "draining"}') if self.closing else (200, b'{"status": "ok"}')
        if path == "/v2/health/ready":
            # Ready to take requests for every model: cold ones are queued, not refused.
            return (503, b'{"ready": false}') if self.closing else (200, b'{"ready": true}')
        if path == "/v2":
            return 200, json.dumps({"name": "zeroserve", "version": _version(),
                                    "extensions": []}).encode()
        if path in MODEL_LIST_PATHS:
            names = sorted(self.services)
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "zeroserve"}
                    for name in names]
            # OpenAI's list and KServe v1's list in one body: each client reads its own key.
            return 200, json.dumps({"object": "list", "data": data, "models": names}).encode()
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        local = self.local_endpoint(request.method, path)
        if local is not None:
            return web.Response(status=local[0], body=local[1], content_type="application/json")
        route = self.router.route(request.host, path)
        shape: Shape = route.shape
        model = route.model
        try:
            if self.closing:
                raise ShuttingDown("the activator is shutting down", retry_after_s=1)
            limit = self._body_limit(model)
            length = request.content_length
            if length is not None and length > limit:
                raise BodyTooLarge(f"request body of {length} bytes is over the limit of {limit}")
            prefix = b""
            if route.needs_body_model:
                prefix = await _read_prefix(request, BODY_PREFIX_BYTES)
                model = model_from_body(prefix)
            if model is None:
                raise BadRequest(f"cannot tell which model {request.method} {path} is for: use "
                                 "/v1/models/NAME, /v2/models/NAME, a known Host, or an OpenAI "
                                 "body with 'model'")
            gate = self.gates.get(model)
            if gate is None:
                raise UnknownModel(f"model {model!r} not found", model=model)
            if route.needs_body_model is False and request.can_read_body and \
                    (length is None or length > BUFFER_BODY_BYTES):
                body: bytes | AsyncIterator[bytes] | None = stream_body(prefix, request, limit)
            elif request.can_read_body:
                rest = await request.read()
                body = prefix + rest if prefix else rest
                if len(body) > limit:
                    raise BodyTooLarge(f"request body larger than {limit} bytes")
            else:
                body = prefix or None
            return await self._forward(request, model, gate, body)
        except ActivatorError as err:
            code = err.status
            if err.model is None and model is not None and model in self.gates:
                err.model = model
            self.metrics.requests.labels(err.model or "", str(code)).inc()
            return error_response(err, shape)

    def _body_limit(self, model: str | None) -> int:
        svc = self.services.get(model) if model else None
        if svc is not None:
            return svc.queue.max_body_bytes
        return max((s.queue.max_body_bytes for s in self.services.values()), default=100 << 20)

    async def _forward(self, request: web.Request, model: str, gate: ModelGate,
                       body: bytes | AsyncIterator[bytes] | None) -> web.StreamResponse:
        assert self.session is not None
        start = self.clock()
        load = self.tracker.get(model)
        load.enter(start)
        code = "502"
        try:
            replica, waited, cold = await gate.acquire()
            if waited:
                self.metrics.queue_wait.labels(model).observe(waited)
            headers = upstream_headers(request)
            url_path = request.raw_path
            retryable = not isinstance(body, AsyncIterator) and request.method in RETRYABLE_METHODS
            attempts = 0
            while True:
                attempts += 1
                try:
                    upstream = await send(self.session, request.method, replica.url + url_path,
                                          headers, body, self.upstream_timeout_s)
                    if upstream.status == 503 and retryable and attempts == 1 and \
                            upstream.headers.get("Connection", "").lower() == "close":
                        # A replica that is draining answers what was already on its way with
                        # 503 + close: it refused the request, it did not fail it.
                        upstream.release()
                        raise UpstreamFailed(f"replica {replica.url} is shutting down")
                    break
                except UpstreamFailed:
                    gate.fail(replica)
                    gate.release(replica)
                    # A replica that refused us is usually one being scaled down: never lose the
                    # request; wait for (or cold-start) another one, once.
                    if not retryable or attempts > 1:
                        raise
                    self.metrics.retries.labels(model).inc()
                    log.info("retrying on another replica model=%s replica=%s", model, replica.url)
                    replica, more, cold2 = await gate.acquire()
                    waited += more
                    cold = cold or cold2
                except BaseException:
                    gate.release(replica)
                    raise
            try:
                extra = self.cold_headers(model, gate, waited) if cold else None
                response = await relay(request, upstream, extra)
                code = str(upstream.status)
                return response
            finally:
                upstream.release()
                gate.release(replica)
        except ActivatorError as err:
            code = str(err.status)
            raise
        except asyncio.CancelledError:
            code = "499"  # the client went away; its queued or upstream request is dropped
            raise
        finally:
            end = self.clock()
            load.leave(end)
            self.metrics.requests.labels(model, code).inc()
            self.metrics.duration.labels(model).observe(end - start)

    def cold_headers(self, model: str, gate: ModelGate, waited: float) -> dict[str, str]:
        timing = [f"queue;dur={waited * 1000:.1f}"]
        if gate.last_cold_start_s is not None:
            timing.append(f"cold-start;dur={gate.last_cold_start_s * 1000:.1f}")
        phases = self._phases(model) if self._phases is not None else {}
        for phase, seconds in phases.items():
            timing.append(f"{phase};dur={seconds * 1000:.1f}")
        return {"X-Zeroserve-Cold-Start": "true", "Server-Timing": ", ".join(timing)}

    # --- lifecycle ----------------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Stop taking requests, let those in flight finish (queued ones too), up to grace_s."""
        self.closing = True
        deadline = self.clock() + grace_s
        # Polling a counter many tasks touch is simpler than an event per decrement, and a
        # drain happens once per process.
        while self.inflight() > 0 and self.clock() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for gate in self.gates.values():
            gate.close()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, gate in self.gates.items():
            load = self.tracker.models.get(name)
            out[name] = {
                "inflight": load.inflight if load else 0,
                "queued": gate.queued,
                "ready_endpoints": [r.url for r in gate.replicas],
                "last_cold_start_s": gate.last_cold_start_s,
            }
        return out


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("zeroserve")
    except Exception:
        return "0"


async def _read_prefix(request: web.Request, limit: int) -> bytes:
    """Up to `limit` bytes of the body, without reading past them."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


ACTIVATOR = web.AppKey("activator", Activator)


def build_app(activator: Activator, *, client_limit_per_host: int = 0) -> web.Application:
    """The activator's aiohttp application; its session and reporter live with the app."""
    # The head limit is checked before the activator routes: an oversized head gets 431 and never
    # reaches (or cold-starts) a replica, as on the fast path.
    app = web.Application(client_max_size=1024**4, handler_args=AIOHTTP_HANDLER_ARGS,
                          middlewares=[limit_head])
    app[ACTIVATOR] = activator
    quiet_malformed_requests()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=client_limit_per_host,
                                         keepalive_timeout=30, enable_cleanup_closed=True)
        activator.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("User-Agent",))
        reporter = asyncio.create_task(activator.tracker.run(activator.report_period_s),
                                       name="activator-load-reporter")
        yield
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await activator.session.close()

    app.cleanup_ctx.append(lifecycle)

    app.router.add_route("*", "/{tail:.*}", activator.handle)
    return app
