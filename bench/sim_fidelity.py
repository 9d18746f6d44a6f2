"""Does the simulator predict a live `zeroserve up`? The same bursty trace, spec and replica costs.

Replays 10 minutes of the Azure code trace (its idle gaps scale the model to zero), time-compressed
by --time-scale, against a live `zeroserve up` serving the synthetic tiny-llm, watching `/status` on
the admin port; then simulates the same arrivals with the same spec. The simulator's cold-start time
and per-request overhead are calibrated from the live run (mean measured cold start, median warm
overhead): the comparison is about the scaling decisions, which is what the simulator is for.
The simulation runs on the live clock: the autoscaler's tick grid is read from /status
(`decided_at`), load buckets are whole monotonic seconds, and the activator's report phase follows
from when its reporter started (see LiveClock). The simulated figures are the mean over
--sim-seeds runs (the seeds draw the ticks' random lateness); seed 0's are printed too.

    python bench/sim_fidelity.py [--time-scale 0.5] [--load-time-s 2] [--sim-seeds 20]

Prints one JSON object: live and sim cold starts and replica-seconds, and their relative differences.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.scenario import costs_from_spec, simulate  # noqa: E402
from sim.state import LoopTiming  # noqa: E402
from sim.traces import load_trace  # noqa: E402
from sim.workloads import Workload, from_trace  # noqa: E402
from zeroserve.spec import load_specs  # noqa: E402

log = logging.getLogger("bench.sim_fidelity")
MODEL = "tiny-llm"
MAX_TOKENS = 32  # the trace's generated tokens, capped so that a request stays well under a second

SPEC = """\
apiVersion: serving.zeroserve.io/v1alpha1
kind: ModelService
metadata: {{name: {model}}}
spec:
  runtime: {{model: tiny-llm, loadTime: {load_s}s, tokenLatency: {token_s}s}}
  scaling:
    stableWindow: {window_s}s
    scaleToZeroGracePeriod: {grace_s}s
    initialScale: 0
    maxReplicas: 4
    tickInterval: 2s
  queue: {{maxQueued: 10000, timeout: 120s}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ReplicaSeen:
    first_s: float
    ready_s: float | None = None
    end_s: float | None = None  # stopping or gone


@dataclass
class LiveRun:
    replicas: dict[str, ReplicaSeen] = field(default_factory=dict)
    latencies: list[tuple[int, float, int]] = field(default_factory=list)  # (request, seconds, status)
    decided_at: set[float] = field(default_factory=set)  # the autoscaler's decision times (monotonic)
    t0: float = 0.0  # monotonic time of trace second 0
    healthy_at: float = 0.0  # monotonic time `up` first answered /healthz


@dataclass(frozen=True)
class LiveClock:
    """Where the live autoscaler's ticks and the activator's reports fell, on the monotonic clock.

    Both processes read the same CLOCK_MONOTONIC, so /status's `decided_at` is on our clock: ticks
    fall on a grid (the loop adds tick_s to its start) a little late, pokes anywhere. The reporter
    cannot be watched from outside; it starts with the loop (one event-loop turn after its first
    tick) and reports on its own fixed 1-second grid from there.
    """

    tick_phase_s: float  # the grid modulo tick_s
    first_tick_s: float  # the loop's first tick: the grid point before `up` answered /healthz
    lateness_mean_s: float
    lateness_max_s: float
    ticks_seen: int

    def timing(self, tick_s: float, origin_s: float) -> LoopTiming:
        """The same timers on a clock whose zero is origin_s (a whole number of ticks)."""
        period = 1.0
        return LoopTiming(tick_phase_s=self.tick_phase_s % tick_s,
                          report_phase_s=(self.first_tick_s - origin_s) % period, report_period_s=period)


def live_clock(run: LiveRun, tick_s: float) -> LiveClock:
    phases = sorted(d % tick_s for d in run.decided_at)
    if not phases:
        raise RuntimeError("no decision times seen in /status")
    # The densest 20 ms stretch (modulo the tick) holds the ticks; its earliest is the least late.
    width = 0.02
    best, best_count = phases[0], 0
    for p in phases:
        count = sum(1 for q in phases if (q - p) % tick_s < width)
        if count > best_count:
            best, best_count = p, count
    late = [(q - best) % tick_s for q in phases if (q - best) % tick_s < width]
    first_tick = run.healthy_at - ((run.healthy_at - best) % tick_s)
    return LiveClock(best, first_tick, float(np.mean(late)), float(max(late)), best_count)


async def watch_status(admin: str, run: LiveRun, t0: float, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            now = time.monotonic() - t0
            try:
                async with session.get(f"{admin}/status") as resp:
                    status = await resp.json()
            except (aiohttp.ClientError, ValueError):
                await asyncio.sleep(0.1)
                continue
            seen = set()
            decided = status.get("models", {}).get(MODEL, {}).get("decided_at")
            if isinstance(decided, float):
                run.decided_at.add(decided)
            for r in status.get("models", {}).get(MODEL, {}).get("replicas", []):
                rid = str(r["id"])
                seen.add(rid)
                rec = run.replicas.setdefault(rid, ReplicaSeen(now))
                if r.get("ready") and rec.ready_s is None:
                    rec.ready_s = now
                if r.get("stopping") and rec.end_s is None:
                    rec.end_s = now
            for rid, rec in run.replicas.items():
                if rid not in seen and rec.end_s is None:
                    rec.end_s = now
            await asyncio.sleep(0.2)


async def send_all(url: str, workload: Workload, run: LiveRun, t0: float) -> None:
    async def one(i: int) -> None:
        body = {"model": MODEL, "prompt": "x", "max_tokens": int(workload.generated_tokens[i])}
        start = time.monotonic()
        try:
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                await resp.read()
                code = resp.status
        except aiohttp.ClientError:
            code = 0
        run.latencies.append((i, time.monotonic() - start, code))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        tasks = []
        for i, at in enumerate(workload.arrival_s.tolist()):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)


def start_up(spec_path: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    port, admin_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeroserve", "up", "-f", str(spec_path), "--port", str(port),
         "--admin-port", str(admin_port), "--log-level", "WARNING"],
        cwd=ROOT, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return proc, port, admin_port


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def live(proc: subprocess.Popen[bytes], port: int, admin_port: int, workload: Workload,
               settle_s: float) -> tuple[LiveRun, float]:
    admin = f"http://127.0.0.1:{admin_port}"
    run = LiveRun()
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"{admin}/healthz") as resp:
                    if resp.status == 200:
                        run.healthy_at = time.monotonic()
                        break
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"zeroserve up exited with {proc.returncode}")
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("zeroserve up did not answer /healthz in 30 s")
    t0 = run.t0 = time.monotonic() + 1.0
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_status(admin, run, t0, stop))
    await send_all(f"http://127.0.0.1:{port}", workload, run, t0)
    log.info("live: all %d requests answered at t=%.0f s", workload.requests, time.monotonic() - t0)
    # Let the last burst scale back to zero, as the simulation does.
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if run.replicas and all(r.end_s is not None for r in run.replicas.values()):
            break
        await asyncio.sleep(0.5)
    end = time.monotonic() - t0
    stop.set()
    await watcher
    return run, end


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--start-s", type=float, default=0.0, help="where in the code trace to start")
    parser.add_argument("--minutes", type=float, default=10.0, help="trace minutes to replay")
    parser.add_argument("--time-scale", type=float, default=0.5, help="<1 compresses the trace")
    parser.add_argument("--load-time-s", type=float, default=2.0, help="tiny-llm's simulated load")
    parser.add_argument("--token-latency-s", type=float, default=0.01)
    parser.add_argument("--window-s", type=float, default=4.0, help="stableWindow")
    parser.add_argument("--grace-s", type=float, default=2.0, help="scaleToZeroGracePeriod")
    parser.add_argument("--sim-seeds", type=int, default=20, help="simulated runs averaged")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    trace = load_trace("code").window(args.start_s, args.start_s + args.minutes * 60.0)
    trace = trace.time_scaled(args.time_scale)
    base = from_trace(trace, MODEL)
    workload = Workload(base.models, base.arrival_s, base.model_index, base.context_tokens,
                        np.clip(base.generated_tokens, 1, MAX_TOKENS))
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "fidelity.yaml"
        spec_path.write_text(SPEC.format(model=MODEL, load_s=args.load_time_s, token_s=args.token_latency_s,
                                         window_s=args.window_s, grace_s=args.grace_s))
        services = load_specs(spec_path)
        log.info("live: %d requests over %.0f s", workload.requests, workload.duration_s)
        proc, port, admin_port = start_up(spec_path)
        try:
            run, live_end = asyncio.run(live(proc, port, admin_port, workload,
                                             settle_s=args.window_s + args.grace_s + 30))
        finally:
            stop_up(proc)

    for rec in run.replicas.values():
        if rec.end_s is None:
            rec.end_s = live_end
    cold = [r.ready_s - r.first_s for r in run.replicas.values() if r.ready_s is not None]
    cold_mean = float(np.mean(cold)) if cold else args.load_time_s
    latencies = np.array([lat for _, lat, code in run.latencies if code == 200])
    tokens = {i: int(workload.generated_tokens[i]) for i, _, _ in run.latencies}
    overhead = [lat - tokens[i] * args.token_latency_s for i, lat, code in run.latencies if code == 200]
    # The median request is warm: its overhead beyond token time is the proxy + server cost.
    fixed_s = max(0.0, float(np.median(overhead))) if overhead else 0.0
    live_replica_s = sum((r.end_s or live_end) - r.first_s for r in run.replicas.values())

    costs = costs_from_spec(services[0], load_s=cold_mean, service_s=fixed_s)
    tick_s = services[0].scaling.tick_s
    clock = live_clock(run, tick_s)
    # Simulate on the monotonic clock less a whole number of tick periods, so that load buckets
    # (whole monotonic seconds), the tick grid and the reports fall where they did live.
    shift = run.t0 % tick_s  # tick_s is whole seconds here (the spec above)
    timing = clock.timing(tick_s, run.t0 - shift)
    shifted = Workload(workload.models, workload.arrival_s + shift, workload.model_index,
                       workload.context_tokens, workload.generated_tokens)
    # The live ticks wake a little late at random, which decides knife edges ("inactive for less
    # than the grace period?" is a coin toss when the grace is a multiple of the tick): one live run
    # is one draw of them. The simulator's prediction is the mean over seeded draws; seed 0's run
    # is shown replica by replica.
    runs = [simulate(services, shifted, costs, seed=seed, timing=timing) for seed in range(args.sim_seeds)]
    outcome = runs[0]
    sim = outcome.summary
    sim_cold = np.array([r.summary.cold_starts for r in runs], dtype=np.float64)
    sim_replica_s = np.array([r.summary.replica_seconds for r in runs])
    out: dict[str, Any] = {
        "requests": workload.requests,
        "trace_span_s": round(workload.duration_s, 1),
        "live": {
            "cold_starts": len(run.replicas),
            "replica_seconds": round(live_replica_s, 1),
            "errors": int(sum(1 for _, _, code in run.latencies if code != 200)),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies.size else None,
            "latency_p99_s": round(float(np.percentile(latencies, 99)), 3) if latencies.size else None,
            "cold_start_mean_s": round(cold_mean, 2),
        },
        "sim": {
            "seeds": args.sim_seeds,
            "cold_starts": round(float(sim_cold.mean()), 2),
            "cold_starts_min_max": [int(sim_cold.min()), int(sim_cold.max())],
            "replica_seconds": round(float(sim_replica_s.mean()), 1),
            "replica_seconds_min_max": [round(float(sim_replica_s.min()), 1),
                                        round(float(sim_replica_s.max()), 1)],
            "seed0_cold_starts": sim.cold_starts,
            "seed0_replica_seconds": round(sim.replica_seconds, 1),
            "lost": sim.lost_timeout + sim.lost_rejected,
            "latency_p50_s": round(sim.latency_p50_s, 3),
            "latency_p99_s": round(sim.latency_p99_s, 3),
            "calibrated_load_s": round(cold_mean, 2),
            "calibrated_overhead_s": round(fixed_s, 4),
        },
        "live_clock": {
            "trace_zero_mod_tick_s": round(run.t0 % tick_s, 4),
            "tick_phase_s": round(clock.tick_phase_s, 4),
            "tick_lateness_mean_ms": round(clock.lateness_mean_s * 1e3, 3),
            "tick_lateness_max_ms": round(clock.lateness_max_s * 1e3, 3),
            "ticks_seen": clock.ticks_seen,
            "report_phase_at_zero_s": round((timing.report_phase_s - shift) % timing.report_period_s, 4),
            "report_period_s": round(timing.report_period_s, 6),
        },
    }
    # Where the two differ: each live replica (first seen, ready, stopped) and the simulated replica
    # count's change points, in seconds from the first request.
    out["live"]["replicas"] = sorted(
        [round(r.first_s, 1), round(r.ready_s or -1.0, 1), round(r.end_s or live_end, 1)]
        for r in run.replicas.values())
    out["sim"]["replica_changes"] = [[round(t - shift, 1), int(n)] for t, n in
                                     zip(outcome.result.timeline_s.tolist(),
                                         outcome.result.timeline_replicas.tolist(), strict=True)][1:]
    out["rel_diff_cold_starts"] = round(rel(len(run.replicas), float(sim_cold.mean())), 4)
    out["rel_diff_replica_seconds"] = round(rel(live_replica_s, float(sim_replica_s.mean())), 4)
    out["rel_diff_seed0_cold_starts"] = round(rel(len(run.replicas), sim.cold_starts), 4)
    out["rel_diff_seed0_replica_seconds"] = round(rel(live_replica_s, sim.replica_seconds), 4)
    out["within_10pct"] = out["rel_diff_cold_starts"] <= 0.10 and out["rel_diff_replica_seconds"] <= 0.10
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
