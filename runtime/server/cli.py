"""`zeroserve serve`: run one model server process (also `python -m runtime.server.cli`).

Only the standard library is imported at module level: the cold-start clock starts with the
process, and the import phase is measured and reported on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def process_start_unix() -> float:
    """When this process was created (not when this module ran), to 10 ms, from /proc.

    /proc/self/stat gives the start in clock ticks since boot; CLOCK_BOOTTIME is the same clock, so
    their difference is the process's age without the 1 s rounding of /proc/stat's btime.
    """
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - age_s
    except (OSError, ValueError, IndexError, AttributeError):
        return _MODULE_LOADED_UNIX


_MODULE_LOADED_UNIX = time.time()
HF_MODEL = "runtime.server.hf:HFModel"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeroserve serve",
        description="Serve one model over KServe v1, "
        "Open Inference v2 and (for text generators) the OpenAI API.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="iris | tiny-llm | module.path:ClassName (default iris; with --runtime hf, the hf model)",
    )
    p.add_argument(
        "--model-name",
        default=os.environ.get("ZEROSERVE_MODEL_NAME"),
        help="name clients address (default $ZEROSERVE_MODEL_NAME, else the kind)",
    )
    p.add_argument("--model-dir", type=Path, default=None, help="where the model's files are")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=_env_int("PORT", 8080),
        help="0 picks a free port (default $PORT, else 8080)",
    )
    p.add_argument("--runtime", choices=("builtin", "hf"), default="builtin")
    p.add_argument("--pool", action="store_true", help="warm pool process (hf runtime only)")
    p.add_argument("--load-time-s", type=float, default=0.5, help="tiny-llm: simulated load time")
    p.add_argument("--token-latency-s", type=float, default=0.01, help="tiny-llm: time per token")
    p.add_argument(
        "--drain-grace-s",
        type=float,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take before exit",
    )
    p.add_argument("--max-body-bytes", type=int, default=100 * 1024 * 1024)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    started = process_start_unix()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad flags, 0 on --help
        return int(e.code or 0)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.pool and args.runtime != "hf":
        print("zeroserve serve: --pool needs --runtime hf", file=sys.stderr)
        return 2
    for flag, value in (
        ("--load-time-s", args.load_time_s),
        ("--token-latency-s", args.token_latency_s),
        ("--drain-grace-s", args.drain_grace_s),
    ):
        if value < 0:
            print(f"zeroserve serve: {flag} = {value}, must be >= 0", file=sys.stderr)
            return 2
    if args.model_dir is not None and not args.model_dir.is_dir():
        print(f"zeroserve serve: --model-dir {args.model_dir} is not a directory", file=sys.stderr)
        return 2

    if args.pool:
        # A warm pool process holds no model yet: runtime/pool_process.py owns that lifecycle.
        from runtime.pool_server import PoolOptions, run_pool

        return run_pool(
            PoolOptions(
                host=args.host,
                port=args.port,
                drain_grace_s=args.drain_grace_s,
                max_body_bytes=args.max_body_bytes,
            ),
            started,
        )
    kind = args.model or (HF_MODEL if args.runtime == "hf" else "iris")

    # The heavy imports (aiohttp, numpy, prometheus_client, the model's module) happen here, timed.
    from runtime.server.app import ServeOptions, serve
    from runtime.server.host import ModelHost, StartupTimes
    from runtime.server.model import ModelConfig
    from runtime.server.registry import ModelSpecError, default_name, resolve_class

    try:
        cls = resolve_class(kind)
    except ModelSpecError as e:
        print(f"zeroserve serve: {e}", file=sys.stderr)
        return 2
    name = args.model_name or (
        args.model_dir.name if kind == HF_MODEL and args.model_dir else default_name(kind)
    )
    model = cls(
        ModelConfig(
            name=name,
            model_dir=args.model_dir,
            load_time_s=args.load_time_s,
            token_latency_s=args.token_latency_s,
        )
    )
    times = StartupTimes(process_start_unix=started, imports_done_unix=time.time())
    options = ServeOptions(
        host=args.host, port=args.port, drain_grace_s=args.drain_grace_s, max_body_bytes=args.max_body_bytes
    )
    import asyncio

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional (not on Windows)
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(ModelHost(model, times), options))
    except OSError as e:  # port in use, bad host
        log.error("cannot serve: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
