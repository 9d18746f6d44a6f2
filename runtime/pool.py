"""Warm pool process: a model server started ahead of time, with no model, waiting to be handed one.

A fresh process spends most of a GPU cold start before reading any weight: importing torch and
transformers, creating the CUDA context, loading kernels on first use. ``zeroserve serve --runtime hf
--pool`` pays all that up front: it listens at once (liveness), then in a worker thread imports
torch + transformers, creates the CUDA context, allocates the loader's pinned staging buffers and
generates two tokens with a tiny random Llama (same code path as a real request). A scale from zero
then costs only ``POST /pool/load`` (weights, from disk or from parked host memory) and one token.

HTTP (besides the model server's own routes, which serve the loaded model):
- ``GET /pool/status`` -> ``{"state": "warming"|"idle"|"loading"|"serving"|"unloading", "model_name",
  "device", "warm_s", "rss_bytes", "parked": [...], "park": {...}, "last_load": {...}}``;
  ``last_load`` carries the load phases and, once the first request after the load produced a
  token, ``first_token_s``/``first_token_unix``.
- ``POST /pool/load {"model_dir", "model_name"}`` -> 200 with the load's timings once readiness
  is 200; 409 unless idle (waits for warming to finish first); 400/404 bad body or directory.
- ``POST /pool/unload {"park": bool}`` -> readiness 503, in-flight requests finish, weights freed
  (kept in pinned host memory with ``park``), state idle again.

The client the local backend uses is at the end (:func:`status`, :func:`load`, :func:`unload`,
:func:`choose`). Module-level imports are the core install's only; torch comes in the warm-up thread.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from runtime.parking import ParkingLot, to_host
from runtime.server.context import HOST, json_response
from runtime.server.hf import HFModel
from runtime.server.host import ModelHost
from runtime.server.model import ModelConfig

if TYPE_CHECKING:
    import torch

    from runtime.shard_reader import Loader

log = logging.getLogger(__name__)

K = TypeVar("K")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def warm_generation_path() -> tuple[torch.device, Loader]:
    """Imports, CUDA context, pinned buffers, and two generated tokens from a tiny random Llama."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from runtime.server.hf import Decoder, pick_device
    from runtime.server.model import GenerationParams
    from runtime.shard_reader import Loader

    device = pick_device()
    if device.type == "cuda":
        torch.cuda.init()  # type: ignore[no-untyped-call]
        torch.empty(1, device=device)          # creates the context now, not on the first load
    loader = Loader()
    loader.warm(device)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model: Any = LlamaForCausalLM(config)
    model = model.to(device=device, dtype=dtype).eval()
    decoder = Decoder(model, device, [1, 2, 3], GenerationParams(max_tokens=2, temperature=0.0))
    decoder.step()
    decoder.step()
    del decoder, model
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return device, loader


class PoolBusy(Exception):
    """The pool process is not in the state the request needs (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class _ParkedSource:
    model_dir: str       # where it was loaded from last (informative)
    identity: str        # runtime.shards.checkpoint_identity: what must match to reuse the weights


class WarmPool:
    """The pool process's state machine around one :class:`ModelHost`."""

    def __init__(self, host: ModelHost, lot: ParkingLot, *, drain_grace_s: float = 30.0) -> None:
        self.host = host
        self.lot = lot
        self.drain_grace_s = drain_grace_s
        self.state = "warming"
        self.device: torch.device | None = None
        self.loader: Loader | None = None
        self.warm_s: float | None = None
        self.warm_error: str | None = None
        self.last_load: dict[str, Any] | None = None
        self._parked_dirs: dict[str, _ParkedSource] = {}
        self._skeletons: dict[str, Any] = {}     # parked model name -> its module, weights on meta
        self._identity = ""
        self._warmed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def warm(self) -> None:
        started = time.perf_counter()
        try:
            self.device, self.loader = await asyncio.to_thread(warm_generation_path)
            self.state = "idle"
        except Exception as e:   # reported in /pool/status; the backend replaces this process
            log.exception("pool warm-up failed")
            self.warm_error = f"{type(e).__name__}: {e}"
            self.state = "failed"
        self.warm_s = time.perf_counter() - started
        log.info("pool %s in %.3f s device=%s rss=%d", self.state, self.warm_s, self.device, rss_bytes())
        self._warmed.set()

    async def load(self, model_dir: Path, model_name: str) -> dict[str, Any]:
        await self._warmed.wait()
        async with self._lock:
            if self.state != "idle":
                raise PoolBusy(f"pool process is {self.state}, not idle")
            self.state = "loading"
            from runtime.shards import checkpoint_identity

            try:
                identity = await asyncio.to_thread(checkpoint_identity, model_dir)
            except Exception:
                self.state = "idle"
                raise
            source = self._parked_dirs.get(model_name)
            parked = self.lot.get(model_name) if source and source.identity == identity else None
            if source is not None and parked is None:   # a new version of the model: the old one is stale
                self.lot.drop(model_name)
                self._parked_dirs.pop(model_name, None)
                self._skeletons.pop(model_name, None)
            self._identity = identity
            skeleton = self._skeletons.pop(model_name, None) if parked else None
            model = HFModel(ModelConfig(name=model_name, model_dir=model_dir), loader=self.loader,
                            parked=parked.tensors if parked else None, skeleton=skeleton)
            self.host.model, self.host.name, self.host.state = model, model_name, "loading"
            started_unix = time.time()
            try:
                await self.host.load()
            except Exception:
                log.exception("pool load failed model=%s dir=%s", model_name, model_dir)
                self._reset()
                raise
            assert model.loaded is not None
            loaded = model.loaded
            self.state = "serving"
            self.last_load = {
                "model_name": model_name,
                "model_dir": str(model_dir),
                "source": loaded.source,
                "bytes": loaded.bytes_loaded,
                "started_unix": started_unix,
                "ready_unix": model.ready_unix,
                "load_s": time.time() - started_unix,
                "phases_s": dict(loaded.timings_s),
                "read_GBps": loaded.stats.gbps,
                "readers": loaded.stats.readers,
            }
            return self.last_load

    async def unload(self, *, park: bool) -> dict[str, Any]:
        async with self._lock:
            if self.state != "serving":
                raise PoolBusy(f"pool process is {self.state}, nothing to unload")
            self.state = "unloading"
            self.host.state = "loading"    # readiness 503: the activator stops sending here
            drained = await self.host.wait_idle(self.drain_grace_s)
            model = self.host.model
            assert isinstance(model, HFModel) and model.loaded is not None
            name, model_dir = model.name, model.model_dir
            started = time.perf_counter()
            # A model loaded from parked weights still has them parked: nothing to copy back.
            if park and name not in self.lot:
                tensors = await asyncio.to_thread(to_host, model.loaded.tensors)
                if self.lot.park(name, tensors):
                    self._parked_dirs[name] = _ParkedSource(str(model_dir), self._identity)
            self._parked_dirs = {k: v for k, v in self._parked_dirs.items() if k in self.lot}
            parked = name in self.lot
            if parked:
                # Keep the module too, weights stripped: the next start skips building it.
                from runtime.loader import strip_weights

                strip_weights(model.loaded.model)
                self._skeletons[name] = model.loaded.model
            self._skeletons = {k: v for k, v in self._skeletons.items() if k in self.lot}
            model.unload()
            self._reset()
            return {"model_name": name, "parked": parked, "drained": drained,
                    "unload_s": time.perf_counter() - started}

    def _reset(self) -> None:
        self.host.model = HFModel(ModelConfig(name=""))
        self.host.name = ""
        self.host.state = "loading"
        self.state = "idle"
        gc.collect()
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def status(self) -> dict[str, Any]:
        model = self.host.model
        last = dict(self.last_load) if self.last_load else None
        if last is not None and isinstance(model, HFModel) and model.name == last["model_name"]:
            last["first_token_s"] = model.first_token_s
            last["first_token_unix"] = model.first_token_unix
        return {
            "state": self.state,
            "model_name": self.host.name or None,
            "device": str(self.device) if self.device else None,
            "warm_s": self.warm_s,
            "warm_error": self.warm_error,
            "rss_bytes": rss_bytes(),
            "parked": [{"model_name": k, "model_dir": v.model_dir} for k, v in self._parked_dirs.items()],
            "park": self.lot.status(),
            "last_load": last,
        }


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
    from runtime.server.app import create_app

    app = create_app(pool.host, max_body_bytes=max_body_bytes)
    assert app[HOST] is pool.host
    add_routes(app, pool)
    return app


@dataclass(frozen=True, slots=True)
class PoolOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    drain_grace_s: float = 30.0
    max_body_bytes: int = 100 * 1024 * 1024
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
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port, backlog=1024, reuse_address=True)
    await site.start()
    host.times.listening_unix = time.time()
    log.info("pool process listening on http://%s:%d (warming)", options.host, options.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


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


# --- client (used by autoscaler/backends/local.py; aiohttp only) ---------------------------------


class PoolError(Exception):
    """The pool process refused or failed the request; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class PoolStatus:
    state: str                      # warming | idle | loading | serving | unloading | failed
    model_name: str | None
    parked: tuple[str, ...]         # model names whose weights this process holds in host memory
    rss_bytes: int
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoadResult:
    model_name: str
    source: str                     # "disk" | "parked"
    bytes_loaded: int
    load_s: float                   # POST received -> readiness 200, measured in the pool process
    read_gbps: float
    phases_s: dict[str, float]      # headers, build, read, install, load
    ready_unix: float
    raw: dict[str, Any]


async def _call(method: str, host: str, port: int, path: str, body: Any, timeout_s: float,
                session: Any) -> dict[str, Any]:
    import aiohttp

    url = f"http://{host}:{port}{path}"
    own = session is None
    s = aiohttp.ClientSession() if own else session
    try:
        async with s.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                message = data.get("error") if isinstance(data, dict) else None
                raise PoolError(f"{method} {url}: {r.status} {message}", r.status)
            assert isinstance(data, dict)
            return data
    except (aiohttp.ClientError, TimeoutError) as e:
        raise PoolError(f"{method} {url}: {type(e).__name__}: {e}") from e
    finally:
        if own:
            await s.close()


async def status(host: str, port: int, *, timeout_s: float = 5.0, session: Any = None) -> PoolStatus:
    raw = await _call("GET", host, port, "/pool/status", None, timeout_s, session)
    parked = tuple(p["model_name"] for p in raw.get("parked", []))
    return PoolStatus(raw["state"], raw.get("model_name"), parked, int(raw.get("rss_bytes", 0)), raw)


async def load(host: str, port: int, model_dir: str | Path, model_name: str, *, timeout_s: float = 600.0,
               session: Any = None) -> LoadResult:
    """Hand a model to an idle (or still warming) pool process; returns once it is ready to serve."""
    raw = await _call("POST", host, port, "/pool/load",
                      {"model_dir": str(model_dir), "model_name": model_name}, timeout_s, session)
    return LoadResult(raw["model_name"], raw["source"], int(raw["bytes"]), float(raw["load_s"]),
                      float(raw["read_GBps"]), dict(raw["phases_s"]), float(raw["ready_unix"]), raw)


async def unload(host: str, port: int, *, park: bool, timeout_s: float = 120.0,
                 session: Any = None) -> dict[str, Any]:
    """Scale to zero without ending the process; with ``park`` the weights stay in host memory."""
    return await _call("POST", host, port, "/pool/unload", {"park": park}, timeout_s, session)


async def wait_ready(host: str, port: int, *, timeout_s: float = 120.0, poll_s: float = 0.05,
                     session: Any = None) -> PoolStatus:
    """Poll until the process has warmed up (idle) or failed; raises PoolError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            st = await status(host, port, timeout_s=max(0.1, min(5.0, deadline - time.monotonic())),
                              session=session)
            if st.state not in ("warming",):
                return st
        except PoolError:
            pass   # not listening yet
        if time.monotonic() > deadline:
            raise PoolError(f"pool process {host}:{port} not warm after {timeout_s} s")
        await asyncio.sleep(poll_s)


def choose(statuses: Mapping[K, PoolStatus], model_name: str) -> K | None:
    """The pool process to load ``model_name`` into: an idle one that has it parked, else any idle
    one that parks nothing (so parked models elsewhere survive), else any idle one."""
    idle = [(k, st) for k, st in statuses.items() if st.state == "idle"]
    for k, st in idle:
        if model_name in st.parked:
            return k
    for k, st in idle:
        if not st.parked:
            return k
    return idle[0][0] if idle else None


if __name__ == "__main__":
    sys.exit(main())
