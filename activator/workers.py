"""Fast-path workers over a fixed endpoint set, several processes sharing one port.

    python -m activator.fastpath --static m=http://127.0.0.1:8001[,http://...] --port 8080 --workers 2

Each worker is a whole activator (its own gates, queue and load tracker) with SO_REUSEPORT, so the
kernel spreads connections across them. Their load reports would each carry the worker's own
activator_id and the autoscaler sums them per model, as it does for several activator pods; here
the sink records nothing because the endpoint set never changes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from activator.app import Activator
from activator.fastpath import FastPath
from autoscaler.aggregation import StatSample
from autoscaler.backends.base import Endpoint, EndpointSet
from zeroserve.spec import parse_specs

log = logging.getLogger(__name__)


class NullSink:
    """A LoadSink for a static endpoint set: there is no autoscaler to tell."""

    def report(self, samples: list[StatSample]) -> None:
        pass

    def poke(self, model: str) -> None:
        pass


def parse_static(values: list[str]) -> dict[str, tuple[Endpoint, ...]]:
    out: dict[str, tuple[Endpoint, ...]] = {}
    for value in values:
        model, sep, urls = value.partition("=")
        if not sep or not model or not urls:
            raise ValueError(f"--static {value!r}: expected MODEL=http://HOST:PORT[,http://...]")
        eps = []
        for i, url in enumerate(urls.split(",")):
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname or parts.port is None:
                raise ValueError(f"--static {value!r}: {url!r} is not http://HOST:PORT")
            eps.append(Endpoint(f"{model}-{i}", parts.hostname, parts.port))
        out[model] = tuple(eps)
    return out


def static_activator(models: dict[str, tuple[Endpoint, ...]], *, container_concurrency: int = 0,
                     upstream_timeout_s: float = 600.0) -> Activator:
    spec = "\n---\n".join(
        f"kind: ModelService\nmetadata: {{name: {name}}}\nspec:\n  runtime: {{model: iris}}\n"
        f"  scaling: {{containerConcurrency: {container_concurrency}}}\n" for name in models)
    activator = Activator(parse_specs(spec), NullSink(), registry=CollectorRegistry(),
                          activator_id=f"static-{os.getpid()}", upstream_timeout_s=upstream_timeout_s)
    for name, eps in models.items():
        activator.table.update(name, EndpointSet(name, eps, version=1))
    return activator


async def run_worker(args: argparse.Namespace) -> None:
    activator = static_activator(parse_static(args.static),
                                 container_concurrency=args.container_concurrency,
                                 upstream_timeout_s=args.upstream_timeout)
    fastpath = FastPath(activator)
    await fastpath.start(args.host, args.port, reuse_port=args.reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # One write of the whole line: the workers share this stdout, and print() writes the text and
    # its newline separately when unbuffered, so two workers' lines could interleave.
    sys.stdout.write(f"activator fast path pid={os.getpid()} on http://{args.host}:{args.port}\n")
    sys.stdout.flush()
    await stop.wait()
    await fastpath.drain(args.drain)
    await fastpath.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m activator.fastpath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--static", action="append", required=True, metavar="MODEL=URL[,URL]",
                   help="a model and its replicas (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT")
    p.add_argument("--container-concurrency", type=int, default=0)
    p.add_argument("--upstream-timeout", type=float, default=600.0)
    p.add_argument("--drain", type=float, default=5.0)
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_static(args.static)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if args.workers <= 1:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(run_worker(args))
        return 0
    child = [sys.executable, "-m", "activator.fastpath", "--workers", "1", "--reuse-port",
             "--host", args.host, "--port", str(args.port), "--drain", str(args.drain),
             "--container-concurrency", str(args.container_concurrency),
             "--upstream-timeout", str(args.upstream_timeout), "--log-level", args.log_level]
    for value in args.static:
        child += ["--static", value]
    procs = [subprocess.Popen(child) for _ in range(args.workers)]

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0)
