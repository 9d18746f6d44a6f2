"""No request lost: a burst against a model at zero, and requests fired as it scales to zero.

Runs the real `zeroserve up` with the synthetic tiny-llm (2 s load time) and short autoscaling
windows. Phase 1 sends 1000 concurrent OpenAI completions to the model while it has no replica;
phase 2 waits, several times, for the autoscaler to decide to scale the model to zero and fires
waves of requests right then and a moment later (while the replica is being stopped). Anything
but a 200 counts as lost. Prints one JSON object.
  python bench/burst.py [--burst 1000] [--cycles 3] [--wave 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
MODEL = "burst"
SPEC = f"""kind: ModelService
metadata: {{name: {MODEL}}}
spec:
  runtime: {{model: tiny-llm, loadTime: 2s, tokenLatency: 5ms}}
  scaling: {{initialScale: 0, stableWindow: 2s, scaleToZeroGracePeriod: 1s, tickInterval: 0.5s,
            maxReplicas: 2}}
  queue: {{maxQueued: 10000, timeout: 60s}}
"""
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 4}


def say(msg: str) -> None:
    print(f"[bench/burst] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    def __init__(self, url: str, admin: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.admin = admin
        self.session = session
        self.codes: Counter[str] = Counter()
        self.cold = 0

    async def one(self) -> tuple[str, float]:
        start = time.monotonic()
        try:
            async with self.session.post(f"{self.url}/v1/completions", json=BODY) as r:
                await r.read()
                code = str(r.status)
                self.cold += r.headers.get("X-Zeroserve-Cold-Start") == "true"
        except (aiohttp.ClientError, TimeoutError) as e:
            code = e.__class__.__name__
        self.codes[code] += 1
        return code, time.monotonic() - start

    async def wave(self, n: int) -> list[tuple[str, float]]:
        return list(await asyncio.gather(*(self.one() for _ in range(n))))

    async def model(self) -> dict[str, Any]:
        async with self.session.get(f"{self.admin}/status") as r:
            status: dict[str, Any] = await r.json()
        return dict(status["models"][MODEL])

    async def wait(self, predicate: Any, timeout_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                m = await self.model()
                if predicate(m):
                    return m
            except (aiohttp.ClientError, KeyError):
                pass
            await asyncio.sleep(0.02)
        raise TimeoutError(f"timed out waiting for {what}")


def _counter(text: str, name: str) -> float:
    """A counter's value for the model from Prometheus text (0 when it was never touched)."""
    prefix = f'{name}{{model="{MODEL}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


async def drive(args: argparse.Namespace, url: str, admin: str) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        run = Run(url, admin, session)
        await asyncio.sleep(1.0)
        await run.wait(lambda m: m.get("ready", 1) == 0, 60, "the model at zero")
        say(f"phase 1: {args.burst} concurrent requests to a model at zero")
        cold = await run.wave(args.burst)
        idle_at = time.monotonic()
        cold_ok = sorted(t for code, t in cold if code == "200")
        say(f"phase 1 done: {Counter(c for c, _ in cold)}")
        await run.wait(lambda m: m.get("ready", 1) == 0, 60, "scale to zero after the burst")
        # Calibrate D on the pattern the cycles repeat: one request, then nothing.
        await run.wave(1)
        idle_at = time.monotonic()
        await run.wait(lambda m: m.get("ready", 1) == 0, 60, "scale to zero after one request")
        to_zero_s = time.monotonic() - idle_at
        say(f"model at zero {to_zero_s:.2f}s after its last request")
        down_sent = 0
        down_ok = 0
        cycles: list[dict[str, Any]] = []
        for cycle in range(args.cycles):
            await run.wave(1)   # (cold-)starts the model; it is warm and idle from here
            offset_s = -0.6 + cycle / max(args.cycles - 1, 1)
            await asyncio.sleep(max(0.0, to_zero_s + offset_s))
            before = await run.model()
            cold_before = run.cold
            results = await run.wave(args.wave)
            down_sent += len(results)
            down_ok += sum(code == "200" for code, _ in results)
            cycles.append({"offset_s": round(offset_s, 2), "ready_when_fired": before.get("ready"),
                           "ok": sum(code == "200" for code, _ in results),
                           "cold": run.cold - cold_before})
            say(f"cycle {cycle + 1}: {cycles[-1]}")
        async with session.get(f"{admin}/metrics") as r:
            metrics = await r.text()
        sent = len(cold) + down_sent
        ok = len(cold_ok) + down_ok

        def pct(q: float) -> float | None:
            if not cold_ok:
                return None
            return round(cold_ok[min(len(cold_ok) - 1, int(q * len(cold_ok)))], 3)

        return {
            "sent": sent, "ok": ok, "lost": sent - ok,
            "burst": len(cold), "burst_ok": len(cold_ok),
            "cold_p50_s": round(statistics.median(cold_ok), 3) if cold_ok else None,
            "cold_p99_s": pct(0.99), "cold_max_s": round(cold_ok[-1], 3) if cold_ok else None,
            "to_zero_after_idle_s": round(to_zero_s, 2), "scale_down_sent": down_sent,
            "scale_down_ok": down_ok, "scale_down_waves": cycles, "codes": dict(run.codes),
            "upstream_retries": _counter(metrics, "zeroserve_upstream_retries_total"),
            "cold_starts": _counter(metrics, "zeroserve_cold_starts_total"),
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--cycles", type=int, default=6)
    p.add_argument("--wave", type=int, default=50)
    p.add_argument("--data-path", choices=("fast", "aiohttp"), default="fast",
                   help="the activator implementation `zeroserve up` serves with")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="zs-bench-burst-"))
    spec = tmp / "burst.yaml"
    spec.write_text(SPEC)
    port, admin_port = free_port(), free_port()
    log = (tmp / "up.log").open("wb")
    cmd = [sys.executable, "-m", "zeroserve", "up", "-f", str(spec), "--port", str(port),
           "--admin-port", str(admin_port), "--drain", "10", "--stop-grace", "5",
           "--data-path", args.data_path]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        result = asyncio.run(asyncio.wait_for(
            drive(args, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"), 400))
    except BaseException:
        log.flush()
        say("zeroserve up log tail:\n" + (tmp / "up.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    result["data_path"] = args.data_path
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
