"""The autoscaler's HTTP face: load reports and pokes in, decisions out.

    POST /v1/stats          {"samples": [{StatSample fields}, ...]}   "at" in unix seconds
    POST /v1/poke           {"models": [name, ...]}
    GET  /v1/status         Autoscaler.status()
    GET  /v1/status/{model} one model's entry

`stats_routes(gate)` returns the route table; `gate(request)` picks the Autoscaler to act on or
answers instead (401, a 307 to the leader, 503 while there is none), so a cluster replica can put
its leadership and auth checks in front. `build_app(autoscaler)` is the plain sub-app.

Samples carry the sender's wall clock. The windows run on this process's clock, so a sample is
placed at (our now - its age), with the age clamped to [0, max_age_s]: a sender whose clock runs
ahead cannot write into buckets that have not happened yet here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from autoscaler.aggregation import StatSample

if TYPE_CHECKING:
    from autoscaler.loop import Autoscaler


class StatsTarget(Protocol):
    """What the routes act on: an Autoscaler, or something that feeds one (`zeroserve up`'s intake)."""

    def __contains__(self, model: object) -> bool: ...
    def ingest(self, samples: Iterable[StatSample]) -> None: ...
    def poke(self, model: str) -> None: ...
    def status(self) -> dict[str, Any]: ...
    def model_status(self, name: str) -> dict[str, Any] | None: ...


Gate = Callable[[web.Request], "StatsTarget | web.Response"]

MAX_SAMPLES = 200_000  # one report per activator per second: 10,000 models with room to spare
MAX_AGE_S = 10.0


class BadRequest(Exception):
    """The body does not follow the contract; the message names the field."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _number(item: Mapping[str, Any], key: str, default: float | None = None, *, low: float = 0.0) -> float:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{key} = {value!r}, must be a number")
    if not math.isfinite(value) or value < low:
        raise BadRequest(f"{key} = {value!r}, must be finite and >= {low}")
    return float(value)


def _text(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key} = {value!r}, must be a non-empty string")
    return value


def parse_samples(body: Any, now: float, wall_now: float, max_age_s: float = MAX_AGE_S) -> list[StatSample]:
    """The StatSamples of a /v1/stats body, re-stamped onto the local clock `now`."""
    if not isinstance(body, dict) or not isinstance(body.get("samples"), list):
        raise BadRequest('body must be {"samples": [...]}')
    items = body["samples"]
    if len(items) > MAX_SAMPLES:
        raise BadRequest(f"samples: {len(items)} in one report, at most {MAX_SAMPLES}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"samples[{i}] must be an object")
        try:
            age_s = min(max(wall_now - _number(item, "at"), 0.0), max_age_s)
            period_s = _number(item, "period_s", 1.0)
            if period_s <= 0:
                raise BadRequest(f"period_s = {period_s!r}, must be > 0")
            queued = _number(item, "queued", 0)
            out.append(
                StatSample(
                    model=_text(item, "model"),
                    activator_id=_text(item, "activator_id"),
                    at=now - age_s,
                    avg_concurrency=_number(item, "avg_concurrency"),
                    requests=_number(item, "requests"),
                    period_s=period_s,
                    queued=int(queued),
                )
            )
        except BadRequest as e:
            raise BadRequest(f"samples[{i}].{e}") from None
    return out


def parse_pokes(body: Any) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        raise BadRequest('body must be {"models": [...]}')
    models = body["models"]
    if not all(isinstance(m, str) and m for m in models):
        raise BadRequest("models must be non-empty strings")
    return list(models)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}") from None


def stats_routes(
    gate: Gate,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    max_age_s: float = MAX_AGE_S,
) -> list[web.RouteDef]:
    async def stats(request: web.Request) -> web.Response:
        target = gate(request)
        if isinstance(target, web.Response):
            return target
        try:
            samples = parse_samples(await _json(request), clock(), wall_clock(), max_age_s)
        except BadRequest as e:
            return _error(400, str(e))
        target.ingest(samples)
        return web.json_response({"accepted": len(samples)})

    async def poke(request: web.Request) -> web.Response:
        target = gate(request)
        if isinstance(target, web.Response):
            return target
        try:
            models = parse_pokes(await _json(request))
        except BadRequest as e:
            return _error(400, str(e))
        known = [m for m in models if m in target]
        for model in known:
            target.poke(model)
        unknown = sorted(set(models) - set(known))
        return web.json_response({"poked": known, "unknown": unknown})

    async def status(request: web.Request) -> web.Response:
        target = gate(request)
        if isinstance(target, web.Response):
            return target
        return web.json_response(target.status())

    async def model_status(request: web.Request) -> web.Response:
        target = gate(request)
        if isinstance(target, web.Response):
            return target
        name = request.match_info["model"]
        entry = target.model_status(name)
        if entry is None:
            return _error(404, f"model {name!r} is not known to the autoscaler")
        return web.json_response(entry)

    return [
        web.post("/v1/stats", stats),
        web.post("/v1/poke", poke),
        web.get("/v1/status", status),
        web.get("/v1/status/{model}", model_status),
    ]


def build_app(autoscaler: Autoscaler, **kwargs: Any) -> web.Application:
    """The API for one in-process Autoscaler, e.g. `app.add_subapp("/autoscaler", build_app(a))`."""
    app = web.Application(client_max_size=64 * 1024**2)
    app.add_routes(stats_routes(lambda _request: autoscaler, **kwargs))
    return app
