"""`zeroserve storage-init SRC_URI DEST_DIR` and `zeroserve cache ls|rm|prune|prefetch`.

Errors are one line on stderr naming the URI and the cause; exit 2 for a bad URI, 1 for any other
failure, never a traceback (ZEROSERVE_DEBUG=1 adds one to the log for developers).
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
import time
from pathlib import Path

from runtime.storage.cache import NodeCache, parse_bytes
from runtime.storage.config import MiB, TransferConfig
from runtime.storage.errors import StorageError
from runtime.storage.fetch import FetchResult, materialize, prefetch
from runtime.storage.progress import human_bytes

log = logging.getLogger(__name__)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=fmt)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """argparse exits on bad flags; the dispatcher contract is a returned code (2 for bad input)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2


def storage_init_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="zeroserve storage-init",
        description="Fetch model artifacts into DEST_DIR (KServe's initContainer contract).",
    )
    parser.add_argument("src_uri")
    parser.add_argument("dest_dir", type=Path)
    parser.add_argument(
        "--no-cache", action="store_true", help="download into DEST_DIR without the node cache"
    )
    parser.add_argument("--cache-dir", type=Path, help="node cache root (default $ZEROSERVE_CACHE_DIR)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--part-size-mib", type=int, default=32, help="size of one ranged part (default 32)")
    parser.add_argument("--attempts", type=int, default=5, help="tries per part without progress (default 5)")
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    _setup_logging()
    if args.concurrency < 1 or args.part_size_mib < 1 or args.attempts < 1:
        print("storage-init: --concurrency, --part-size-mib and --attempts must be >= 1", file=sys.stderr)
        return 2
    config = TransferConfig(
        concurrency=args.concurrency,
        part_size_bytes=args.part_size_mib * MiB,
        min_ranged_bytes=2 * args.part_size_mib * MiB,
        attempts=args.attempts,
    )
    cache = None
    if not args.no_cache:
        default = NodeCache.default()
        cache = NodeCache(args.cache_dir, default.budget_bytes) if args.cache_dir else default

    async def run_init() -> FetchResult:
        task = asyncio.current_task()
        assert task is not None
        # SIGTERM (pod deletion) cancels cleanly so resume journals are written on the way out.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await materialize(args.src_uri, args.dest_dir, cache, config)

    try:
        # Plain asyncio: uvloop measured no faster here and cost more CPU per byte.
        result = asyncio.run(run_init())
    except StorageError as err:
        print(f"storage-init: error: {err}", file=sys.stderr)
        return err.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"storage-init: error: {args.src_uri}: interrupted; a rerun resumes", file=sys.stderr)
        return 1
    except Exception as err:  # the contract is one line, never a traceback
        if os.environ.get("ZEROSERVE_DEBUG") == "1":
            log.exception("unexpected failure")
        print(f"storage-init: error: {args.src_uri}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    log.info("%s", result.summary())
    return 0


def cache_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zeroserve cache", description="Inspect and trim the node cache.")
    parser.add_argument("--cache-dir", type=Path, help="node cache root (default $ZEROSERVE_CACHE_DIR)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list entries, least recently used first")
    ls.add_argument("--json", action="store_true")
    rm = sub.add_parser("rm", help="remove entries by URI or key")
    rm.add_argument("targets", nargs="+")
    prune = sub.add_parser("prune", help="evict LRU entries down to a budget")
    prune.add_argument("--budget", help="bytes, e.g. 50G (default $ZEROSERVE_CACHE_BYTES)")
    warm = sub.add_parser("prefetch", help="download URIs into the cache (no destination)")
    warm.add_argument("uris", nargs="*")
    warm.add_argument("--list-file", type=Path, help="more URIs, one per line (a mounted ConfigMap)")
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    _setup_logging()
    default = NodeCache.default()
    cache = NodeCache(args.cache_dir, default.budget_bytes) if args.cache_dir else default
    if args.cmd == "ls":
        entries = cache.entries()
        if args.json:
            rows = [
                {
                    "key": e.key,
                    "uri": e.uri,
                    "version": e.version,
                    "bytes": e.size_bytes,
                    "files": e.files,
                    "last_used": e.last_used_s,
                }
                for e in entries
            ]
            print(json.dumps(rows, indent=2))
            return 0
        now = time.time()
        for e in entries:
            age = now - e.last_used_s
            size = human_bytes(e.size_bytes)
            print(f"{e.key}  {size:>10}  {e.files:>6} files  used {age:8.0f}s ago  {e.uri}")
        print(
            f"total {human_bytes(sum(e.size_bytes for e in entries))} in {len(entries)} entries, "
            f"budget {human_bytes(cache.budget_bytes)}"
        )
        return 0
    if args.cmd == "prefetch":
        return _prefetch_all(cache, args.uris, args.list_file)
    if args.cmd == "rm":
        status = 0
        entries = cache.entries()
        for target in args.targets:
            matches = [e for e in entries if target in (e.key, e.uri)]
            if not matches:
                print(f"cache: error: {target}: no such entry", file=sys.stderr)
                status = 1
            for e in matches:
                if cache.remove(e.key):
                    print(f"removed {e.key} {e.uri}")
                else:
                    print(f"cache: error: {e.uri}: in use, not removed", file=sys.stderr)
                    status = 1
        return status
    try:
        budget = parse_bytes(args.budget) if args.budget else None
    except ValueError:
        print(f"cache: error: bad --budget {args.budget!r}", file=sys.stderr)
        return 2
    removed = cache.prune(budget)
    for e in removed:
        print(f"evicted {e.key} {human_bytes(e.size_bytes)} {e.uri}")
    print(f"evicted {len(removed)} entries, {human_bytes(sum(e.size_bytes for e in removed))}")
    return 0


def _prefetch_all(cache: NodeCache, uris: list[str], list_file: Path | None) -> int:
    """Warm the cache with every URI; a failure is one line and does not stop the others."""
    todo = list(uris)
    if list_file is not None:
        try:
            todo += [
                u.strip() for u in list_file.read_text().splitlines() if u.strip() and not u.startswith("#")
            ]
        except OSError as err:
            print(f"cache: error: {list_file}: {err.strerror}", file=sys.stderr)
            return 1
    status = 0

    async def warm_all() -> None:
        nonlocal status
        for uri in todo:
            started = time.monotonic()
            try:
                entry = await prefetch(uri, cache)
            except StorageError as err:
                print(f"cache: error: {err}", file=sys.stderr)
                status = max(status, err.exit_code)
                continue
            log.info("prefetched %s into %s in %.2fs", uri, entry, time.monotonic() - started)

    asyncio.run(warm_all())
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    commands = {"storage-init": storage_init_main, "cache": cache_main}
    if not args or args[0] not in commands:
        usage = "usage: python -m runtime.storage.cli {storage-init SRC_URI DEST_DIR | cache COMMAND}"
        print(usage, file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
