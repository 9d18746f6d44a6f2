"""How fast the simulator runs a fleet: 24 hours of 1,000 models (Zipf popularity, bursty on/off).

Every model runs Knative-default KPA scaling (sim/specs/llm-kpa.yaml: 8 concurrent requests per
replica, 14 s cold start) through `autoscaler.batch` (the numpy form of the live policy); requests
carry token counts resampled from the Azure conversation trace (prefill 10k tokens/s, decode 50/s).

    python bench/sim_speed.py [--models 1000] [--hours 24] [--rate 10] [--scalar]

Prints one JSON object: models, sim_hours, requests, wall_s (simulation only, not workload
generation), cpu_s, the machine's load average, events, events_per_s, model_ticks, and the run's
summary numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim import workloads  # noqa: E402
from sim.scenario import costs_from_spec, simulate  # noqa: E402
from sim.traces import load_trace  # noqa: E402
from zeroserve.spec import load_specs  # noqa: E402

log = logging.getLogger("bench.sim_speed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rate", type=float, default=10.0, help="mean requests/s over all models")
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scalar", action="store_true", help="the per-model controller, not the batch one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    services = load_specs(ROOT / "sim" / "specs" / "llm-kpa.yaml")
    started = time.perf_counter()
    workload = workloads.many_models(args.models, args.rate, args.hours * 3600.0, args.zipf,
                                     on_s=120.0, off_s=900.0, seed=args.seed, tokens_from=load_trace("conv"))
    log.info("workload: %d requests for %d models in %.1f s", workload.requests, args.models,
             time.perf_counter() - started)
    costs = costs_from_spec(services[0], load_s=14.0, prefill_tokens_per_s=10_000.0,
                            decode_tokens_per_s=50.0)
    cpu_started = time.process_time()
    outcome = simulate(services, workload, costs, seed=args.seed, batch=not args.scalar)
    cpu_s = time.process_time() - cpu_started
    summary = outcome.summary
    print(json.dumps({
        "models": args.models,
        "sim_hours": args.hours,
        "requests": workload.requests,
        "wall_s": round(outcome.wall_s, 2),
        # CPU time of this process over the same span: on a shared machine wall_s includes waiting.
        "cpu_s": round(cpu_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "events": summary.events,
        "events_per_s": round(summary.events / outcome.wall_s),
        "model_ticks": summary.ticks,
        "controller": "scalar" if args.scalar else "batch",
        "gpu_hours": round(summary.gpu_seconds / 3600.0, 1),
        "cold_starts": summary.cold_starts,
        "cold_wait_fraction": round(summary.cold_wait_fraction, 4),
        "latency_p99_s": round(summary.latency_p99_s, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
