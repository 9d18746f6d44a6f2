"""A stand-in model replica for the emulator's kubelet: a small HTTP server with the runtime's routes.

The emulated pods need *something* real that listens, answers readiness only after start-up and
answers inference; this is the smallest such thing, so the tests don't depend on the runtime's own
start-up time. `python replica.py --port P --model NAME [--startup-delay-s S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiohttp import web


def build(model: str, started: asyncio.Event) -> web.Application:
    replica_id = f"{os.getpid()}"

    async def live(_: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"ready": started.is_set()}, status=200 if started.is_set() else 503)

    async def infer(request: web.Request) -> web.Response:
        if request.match_info["name"] != model:
            return web.json_response({"error": "unknown model"}, status=404)
        await request.read()
        body = {"model_name": model, "id": replica_id,
                "outputs": [{"name": "output-0", "datatype": "INT64", "shape": [1], "data": [0]}]}
        return web.json_response(body, headers={"X-Replica": replica_id})

    async def predict(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"predictions": [0]}, headers={"X-Replica": replica_id})

    app = web.Application()
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}/ready", ready)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_post("/v1/models/{name}:predict", predict)
    return app


async def _main(port: int, model: str, startup_delay_s: float) -> None:
    started = asyncio.Event()
    runner = web.AppRunner(build(model, started))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.sleep(startup_delay_s)
    started.set()
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--startup-delay-s", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.model, args.startup_delay_s))
