"""The warm pool: its HTTP protocol, and the async client the local backend uses.

A warm pool process (``zeroserve serve --runtime hf --pool``, or ``python -m runtime.pool``) is a
model server started ahead of time with no model, waiting to be handed one; its state machine is
:mod:`runtime.pool_process`, its routes and server :mod:`runtime.pool_server`.

HTTP (besides the model server's own routes, which serve the loaded model):
- ``GET /pool/status`` -> ``{"state": "warming"|"idle"|"loading"|"serving"|"unloading", "model_name",
  "device", "warm_s", "rss_bytes", "parked": [...], "park": {...}, "last_load": {...}}``;
  ``last_load`` carries the load phases and, once the first request after the load produced a
  token, ``first_token_s``/``first_token_unix``.
- ``POST /pool/load {"model_dir", "model_name"}`` -> 200 with the load's timings once readiness
  is 200; 409 unless idle (waits for warming to finish first); 400/404 bad body or directory.
- ``POST /pool/unload {"park": bool}`` -> readiness 503, in-flight requests finish, weights freed
  (kept in pinned host memory with ``park``), state idle again.

The client here (:func:`status`, :func:`load`, :func:`unload`, :func:`wait_ready`, :func:`choose`)
needs only aiohttp, imported when called.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K")


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
    from runtime.pool_server import main

    sys.exit(main())
