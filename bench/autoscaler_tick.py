"""How long one autoscaler tick takes for 10,000 models, and how fast a poke reaches backend.scale.

Part 1 (tick): 10,000 KPA models (a tenth on rps, a tenth with a scale-down delay), two activators
reporting every model every second with a random-walk load (a third of the models idle, some
bursting into panic), ready replicas following the decisions. Time is virtual (the clock the
autoscaler reads is advanced by the bench); the tick itself runs for real and is timed with
perf_counter. The same decisions through the scalar `policy.decide` + `aggregation` path are timed
on a few ticks, so the batch speed-up is a ratio measured in this run.

Part 2 (poke): the same 10,000 models on a real event loop with `run()` ticking every 2 s; models at
zero are poked one at a time and the time from `poke()` to the backend's `scale()` call is recorded.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from autoscaler.aggregation import Aggregator, StatSample
from autoscaler.backends.base import EndpointCallback, EndpointSet
from autoscaler.config import policy_config_from_spec
from autoscaler.loop import Autoscaler
from autoscaler.policy import Observation, PolicyState, decide, initial_state
from zeroserve.spec import ModelService, ScalingSpec


class Backend:
    """Records scale calls; ready replicas follow the target at once."""

    def __init__(self) -> None:
        self.ready: dict[str, int] = {}
        self.calls = 0
        self.arrivals: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def register(self, svc: ModelService) -> None:
        self.ready.setdefault(svc.name, 0)

    def unregister(self, name: str) -> None:
        self.ready.pop(name, None)

    async def scale(self, model: str, replicas: int) -> None:
        if replicas > 0:
            self.arrivals.setdefault(model, time.perf_counter())  # the first call that starts it
        self.calls += 1
        self.ready[model] = replicas

    async def prefetch(self, model: str) -> None:
        return None

    def ready_replicas(self, model: str) -> int:
        return self.ready.get(model, 0)

    def endpoints(self, model: str) -> EndpointSet:
        return EndpointSet(model)

    def subscribe(self, callback: EndpointCallback) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


def fleet(n: int, rng: random.Random) -> list[ModelService]:
    out = []
    for i in range(n):
        scaling = ScalingSpec(target=10.0)
        if i % 10 == 1:
            scaling = replace(scaling, metric="rps", target=20.0)
        if i % 10 == 2:
            scaling = replace(scaling, scale_down_delay_s=rng.choice([10.0, 30.0, 120.0]))
        out.append(ModelService(name=f"model-{i:05d}", scaling=scaling))
    return out


class Load:
    """Per-model load: a third idle, the rest a random walk with occasional bursts."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.level = self.rng.uniform(0.0, 40.0, n)
        self.level[self.rng.random(n) < 1 / 3] = 0.0
        self.active = self.level > 0

    def step(self) -> np.ndarray:
        n = len(self.level)
        self.level = np.maximum(0.0, self.level + self.rng.normal(0.0, 1.0, n)) * self.active
        burst = self.active & (self.rng.random(n) < 0.002)
        self.level[burst] *= 4.0
        return self.level


def samples_for(names: list[str], level: np.ndarray, at: float) -> list[list[StatSample]]:
    """Two activators, each seeing half of every model's load."""
    half = (level / 2.0).tolist()
    return [
        [StatSample(name, act, at, v, v) for name, v in zip(names, half, strict=True)] for act in ("a", "b")
    ]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def bench_ticks(n: int, ticks: int, scalar_ticks: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    services = fleet(n, rng)
    names = [s.name for s in services]
    backend = Backend()
    clock = [10_000.0]
    scaler = Autoscaler(backend, clock=lambda: clock[0], registry=CollectorRegistry())
    started = time.perf_counter()
    for svc in services:
        backend.register(svc)
        scaler.upsert(svc)
    upsert_ms = (time.perf_counter() - started) * 1e3
    load = Load(n, seed)

    # The scalar path keeps its own windows and states, fed the same samples.
    configs = [policy_config_from_spec(s.scaling) for s in services]
    agg = Aggregator()
    for name, cfg in zip(names, configs, strict=True):
        agg.configure(name, cfg.stable_window_s, cfg.panic_window_s)
    states: list[PolicyState] = [initial_state(cfg, 0, clock[0]) for cfg in configs]

    tick_ms: list[float] = []
    ingest_ms: list[float] = []
    scalar_ms: list[float] = []
    first_tick_ms = 0.0
    for t in range(ticks):
        for _ in range(2):  # two one-second reports per 2 s tick
            clock[0] += 1.0
            level = load.step()
            for batch in samples_for(names, level, clock[0]):
                began = time.perf_counter()
                scaler.ingest(batch)
                ingest_ms.append((time.perf_counter() - began) * 1e3)
                if t < scalar_ticks:
                    agg.ingest(batch)
        began = time.perf_counter()
        scaler.tick()
        elapsed = (time.perf_counter() - began) * 1e3
        if t == 0:
            first_tick_ms = elapsed  # includes building the config arrays once
        else:
            tick_ms.append(elapsed)
        await asyncio.sleep(0)  # let the scale calls run
        if 0 < t < scalar_ticks:
            began = time.perf_counter()
            for i, (name, cfg) in enumerate(zip(names, configs, strict=True)):
                observed = agg.observe(name, cfg.metric, clock[0])
                assert observed is not None
                obs = Observation(observed[0], observed[1], backend.ready_replicas(name))
                _, states[i] = decide(cfg, states[i], obs, clock[0])
            scalar_ms.append((time.perf_counter() - began) * 1e3)
        if t % 10 == 0:
            print(f"tick {t}: {elapsed:.1f} ms", file=sys.stderr)
    status = scaler.status()["models"]
    return {
        "models": n,
        "ticks": len(tick_ms),
        "upsert_all_ms": round(upsert_ms, 1),
        "first_tick_ms": round(first_tick_ms, 2),
        "tick_ms_p50": round(statistics.median(tick_ms), 2),
        "tick_ms_p90": round(pct(tick_ms, 90), 2),
        "tick_ms_max": round(max(tick_ms), 2),
        "ingest_ms_per_10k_samples_p50": round(statistics.median(ingest_ms) * 10_000 / n, 2),
        "scalar_tick_ms_p50": round(statistics.median(scalar_ms), 1),
        "batch_speedup": round(statistics.median(scalar_ms) / statistics.median(tick_ms), 1),
        "scale_calls": backend.calls,
        "models_in_panic": sum(1 for m in status.values() if m["panic"]),
        "models_at_zero": sum(1 for m in status.values() if m["desired"] == 0),
    }


async def bench_pokes(n: int, pokes: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    services = fleet(n, rng)
    cold = {s.name for s in rng.sample(services, pokes)}
    services = [
        replace(s, scaling=replace(s.scaling, initial_scale=0)) if s.name in cold else s for s in services
    ]
    backend = Backend()
    scaler = Autoscaler(backend, tick_s=2.0, registry=CollectorRegistry())
    for svc in services:
        backend.register(svc)
        scaler.upsert(svc)
    names = [s.name for s in services]
    stop = asyncio.Event()

    async def report() -> None:  # an activator reporting every model each second, like the real one
        while not stop.is_set():
            now = time.monotonic()
            scaler.ingest(StatSample(name, "a", now, 1.0, 1.0) for name in names if name not in cold)
            await asyncio.sleep(1.0)

    run = asyncio.create_task(scaler.run())
    reporter = asyncio.create_task(report())
    latencies: list[float] = []
    try:
        await asyncio.sleep(2.5)  # past the first ticks
        backend.arrivals.clear()
        for name in sorted(cold):
            poked_at = time.perf_counter()
            scaler.poke(name)
            for _ in range(1000):
                await asyncio.sleep(0)
                if name in backend.arrivals:
                    break
            else:
                await asyncio.sleep(0.05)
            if name in backend.arrivals:
                latencies.append((backend.arrivals[name] - poked_at) * 1e3)
            await asyncio.sleep(rng.uniform(0.0, 0.02))  # spread pokes over ticks
    finally:
        stop.set()
        run.cancel()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    return {
        "pokes": pokes,
        "pokes_answered": len(latencies),
        "poke_to_scale_ms_p50": round(statistics.median(latencies), 3),
        "poke_to_scale_ms_p99": round(pct(latencies, 99), 3),
        "poke_to_scale_ms_max": round(max(latencies), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--scalar-ticks", type=int, default=4)
    parser.add_argument("--pokes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    # Other work on this machine slows every figure; the load average says how busy it was.
    result: dict[str, Any] = {"bench": "autoscaler_tick", "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    result.update(asyncio.run(bench_ticks(args.models, args.ticks, args.scalar_ticks, args.seed)))
    result.update(asyncio.run(bench_pokes(args.models, args.pokes, args.seed)))
    result.update(
        {
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
