"""GPU cold start: from zero to the first streamed token, naive vs zeroserve (warm pool, fast loader,
parked weights), in one run on the same synthetic checkpoint.

    python bench/gpu_cold_start.py [--preset 3.6b|small|tiny] [--repeats 3] [--workdir DIR]

Makes a random Llama checkpoint itself (bf16, 2 safetensors shards, no tokenizer: the hf runtime's
byte tokenizer drives it): 3.6 B parameters when CUDA is available, a ~100 M-parameter one on CPU.
The page cache is warmed first so both paths read from memory ("artifacts local"). Then:

- naive: a fresh process imports transformers, ``from_pretrained``, generates 1 token (wall time
  from spawn to the token);
- zeroserve cold: a warm pool process (started and warmed beforehand, as the local backend keeps
  one per GPU) gets ``POST /pool/load``; the clock runs to the first ``data:`` event of a streamed
  ``/v1/completions`` (max_tokens 1). Direct to the pool process, not through the activator;
- zeroserve parked: the same after ``POST /pool/unload {"park": true}`` (weights in host memory);
- the loader's GB/s (from the pool's load report) and pinned host-to-device GB/s (CUDA only).

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.cold_start_baselines import (  # noqa: E402
    PRESETS,
    h2d_pinned_gbps,
    make_checkpoint,
    reader_comparison,
    run_naive,
    warm_page_cache,
)


def progress(msg: str) -> None:
    print(f"[gpu_cold_start] {msg}", file=sys.stderr, flush=True)


async def first_token(port: int, model: str, *, timeout_s: float = 300.0,
                      what: str = "completion") -> tuple[float, dict[str, str]]:
    """Seconds until the first SSE data event of a streamed 1-token completion, and the cold-start
    headers the answer carried."""
    import aiohttp

    body = {"model": model, "prompt": "hi", "max_tokens": 1, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s, s.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        if r.status != 200:
            raise RuntimeError(f"{what} failed: {r.status} {await r.text()}")
        wanted = ("server-timing", "x-zeroserve-cold-start")
        headers = {k: v for k, v in r.headers.items() if k.lower() in wanted}
        async for line in r.content:
            if line.startswith(b"data: {"):
                elapsed = time.perf_counter() - t0
                await r.read()
                return elapsed, headers
    raise RuntimeError("stream ended without a data event")


async def cold_start(port: int, model_dir: Path, model: str) -> dict[str, Any]:
    from runtime import pool

    t0 = time.perf_counter()
    result = await pool.load("127.0.0.1", port, model_dir, model)
    t_loaded = time.perf_counter()
    ttft, _ = await first_token(port, model)
    total = time.perf_counter() - t0
    return {"total_s": total, "load_s": t_loaded - t0, "first_token_s": ttft, "source": result.source,
            "read_GBps": result.read_gbps, "bytes": result.bytes_loaded, "phases_s": result.phases_s}


async def zeroserve_paths(model_dir: Path, repeats: int) -> dict[str, Any]:
    from runtime import pool

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZEROSERVE_PARK_BUDGET_BYTES": str(64 << 30)}
    cmd = [sys.executable, "-m", "zeroserve", "serve", "--runtime", "hf", "--pool", "--port", str(port),
           "--log-level", "WARNING"]
    spawned = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                            stderr=sys.stderr)
    try:
        st = await pool.wait_ready("127.0.0.1", port, timeout_s=300)
        if st.state != "idle":
            raise RuntimeError(f"pool process did not warm: {st.raw}")
        pool_start_s = time.perf_counter() - spawned
        progress(f"pool process warm in {pool_start_s:.2f} s, rss {st.rss_bytes / 1e6:.0f} MB")
        cold, parked = [], []
        for i in range(repeats):
            cold.append(await cold_start(port, model_dir, "bench"))
            progress(f"cold #{i + 1}: {cold[-1]['total_s']:.3f} s ({cold[-1]['read_GBps']:.2f} GB/s read)")
            serving = await pool.status("127.0.0.1", port)
            await pool.unload("127.0.0.1", port, park=i == repeats - 1)
        for i in range(repeats):
            parked.append(await cold_start(port, model_dir, "bench"))
            progress(f"parked #{i + 1}: {parked[-1]['total_s']:.3f} s (from {parked[-1]['source']})")
            await pool.unload("127.0.0.1", port, park=True)
        idle = await pool.status("127.0.0.1", port)
        return {"cold": cold, "parked": parked, "pool_start_to_idle_s": pool_start_s,
                "pool_warm_s": st.raw.get("warm_s"), "pool_rss_bytes_idle": st.rss_bytes,
                "pool_rss_bytes_serving": serving.rss_bytes, "pool_rss_bytes_parked": idle.rss_bytes,
                "device": st.raw.get("device")}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def via_activator(model_dir: Path, workdir: Path) -> dict[str, Any]:
    """The same two starts through `zeroserve up` (activator -> autoscaler -> local backend -> pool)."""
    from prometheus_client import CollectorRegistry

    from zeroserve.spec import parse_specs
    from zeroserve.up import Stack, UpConfig

    spec = f"""
kind: ModelService
metadata: {{name: bench}}
spec:
  storageUri: file://{model_dir}
  runtime: {{kind: hf, prewarm: 1}}
  scaling: {{park: true, initialScale: 0, stableWindow: 6s, scaleToZeroGracePeriod: 0s, tickInterval: 0.5s}}
"""
    config = UpConfig(files=(), port=_free_port(), admin_port=_free_port(), drain_s=2, stop_grace_s=5,
                      cache_dir=workdir / "node-cache")
    os.environ.setdefault("ZEROSERVE_PARK_BUDGET_BYTES", str(64 << 30))
    stack = Stack(parse_specs(spec), config, registry=CollectorRegistry())
    await stack.start()
    try:
        backend = stack.backend

        def pool_has(state: str, parked: bool) -> bool:
            return any(p["state"] == state and (not parked or "bench" in p["parked"])
                       for p in backend.pool_status())

        await _until(lambda: pool_has("idle", False), 300, "a warm pool process")
        await asyncio.sleep(1.0)   # let the prefetch into the node cache settle
        if backend.ready_replicas("bench"):
            raise RuntimeError("a replica is up before the first request: not a cold start")
        cold_s, cold_headers = await first_token(config.port, "bench", timeout_s=600,
                                                 what="completion via the activator")
        progress(f"via activator, cold: {cold_s:.3f} s {cold_headers}")
        await _until(lambda: backend.ready_replicas("bench") == 0 and pool_has("idle", True), 180,
                     "scale to zero, weights parked")
        parked_s, parked_headers = await first_token(config.port, "bench", timeout_s=600,
                                                     what="completion via the activator")
        progress(f"via activator, parked: {parked_s:.3f} s {parked_headers}")
        return {"cold_s": cold_s, "cold_headers": cold_headers, "parked_s": parked_s,
                "parked_headers": parked_headers}
    finally:
        await stack.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size (default 3.6b with CUDA, small without)")
    p.add_argument("--repeats", type=int, default=3, help="zeroserve cold and parked starts each")
    p.add_argument("--no-activator", action="store_true", help="skip the run through `zeroserve up`")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "zeroserve-gpu-cold-start")
    args = p.parse_args()

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    preset = args.preset or ("3.6b" if cuda else "small")
    args.workdir.mkdir(parents=True, exist_ok=True)
    progress(f"making the {preset} checkpoint in {args.workdir} (reused if there)")
    model_dir = make_checkpoint(args.workdir, preset, cuda)
    nbytes = warm_page_cache(model_dir)
    from runtime.shards import read_header, shard_files

    shards = [read_header(f) for f in shard_files(model_dir)]
    params = sum(math.prod(e.shape) for s in shards for e in s.entries)
    h2d = h2d_pinned_gbps()
    readers = reader_comparison(model_dir, "cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.empty_cache()   # give the GPU memory back before the naive process and the pool
    progress(f"in-process reads (best of 3): {readers}")
    progress(f"{params / 1e9:.3f} B params, {nbytes / 1e9:.3f} GB in {len(shards)} shards; h2d {h2d} GB/s")

    progress("naive: fresh process, import transformers, from_pretrained, generate 1 token")
    naive_s, naive_how = run_naive(model_dir)
    progress(f"naive: {naive_s:.3f} s")
    zs = asyncio.run(zeroserve_paths(model_dir, max(1, args.repeats)))
    up = None if args.no_activator else asyncio.run(via_activator(model_dir, args.workdir))
    cold_s = statistics.median(r["total_s"] for r in zs["cold"])
    parked_s = statistics.median(r["total_s"] for r in zs["parked"])
    load_gbps = statistics.median(r["read_GBps"] for r in zs["cold"])
    result = {
        "bench": "gpu_cold_start",
        "params": params,
        "bytes": nbytes,
        "shards": len(shards),
        "dtype": "bfloat16",
        "device": zs["device"] or ("cuda" if cuda else "cpu"),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "preset": preset,
        "path": "direct to the warm pool process (POST /pool/load + streamed /v1/completions), no activator",
        "page_cache": "warm (checkpoint read once before timing)",
        "naive_s": naive_s,
        "naive_placement": naive_how,
        "zeroserve_cold_s": cold_s,
        "zeroserve_parked_s": parked_s,
        "speedup_vs_naive": naive_s / cold_s,
        "speedup_parked_vs_naive": naive_s / parked_s,
        "load_GBps": load_gbps,
        "h2d_pinned_GBps": h2d if h2d is not None else None,
        "h2d_note": None if h2d is not None else "no cuda",
        "load_ratio_vs_h2d": load_gbps / h2d if h2d else None,
        "in_process_reads": readers,
        "loader_vs_plain_pread": readers["loader_GBps"] / readers["plain_pread_GBps"],
        "loader_vs_safetensors": readers["loader_GBps"] / readers["safetensors_load_file_GBps"],
        "safetensors_note": None if cuda else "on CPU load_file maps the file (lazy, no copy): not a read",
        "via_activator": up,
        "zeroserve_cold_via_activator_s": up["cold_s"] if up else None,
        "zeroserve_parked_via_activator_s": up["parked_s"] if up else None,
        "zeroserve_cold_runs": zs["cold"],
        "zeroserve_parked_runs": zs["parked"],
        "pool_start_to_idle_s": zs["pool_start_to_idle_s"],
        "pool_warm_s": zs["pool_warm_s"],
        "pool_rss_bytes_idle": zs["pool_rss_bytes_idle"],
        "pool_rss_bytes_serving": zs["pool_rss_bytes_serving"],
        "pool_rss_bytes_parked": zs["pool_rss_bytes_parked"],
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
