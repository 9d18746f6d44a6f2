"""One simulation end to end: a spec, a workload and the replica cost models, run and summarised.

Shared by the CLI, the sweep and the benchmarks so that they all mean the same thing by a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sim.control import PolicyController, policy_config
from sim.engine import Controller, Engine
from sim.models import ColdStartModel, ServiceTimeModel
from sim.report import Summary, summarize
from sim.state import WHOLE_SECONDS, LoopTiming, ModelSetup, RunResult
from sim.workloads import Workload
from zeroserve.spec import ModelService

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplicaCosts:
    cold_start: ColdStartModel
    service_time: ServiceTimeModel


def costs_from_spec(svc: ModelService, *, load_s: float | None = None, schedule_s: float = 0.0,
                    artifact_bytes: float = 0.0, fetch_bytes_per_s: float = 1e9,
                    cache_hit_ratio: float = 1.0, jitter_fraction: float = 0.0,
                    service_s: float = 0.0, prefill_tokens_per_s: float = 0.0,
                    decode_tokens_per_s: float | None = None) -> ReplicaCosts:
    """Cost models with the spec's own knobs as defaults: the load time of the synthetic tiny-llm
    (runtime.loadTime) and its per-token latency (runtime.tokenLatency) as the decode rate."""
    runtime = svc.runtime
    decode = decode_tokens_per_s
    if decode is None:
        decode = 1.0 / runtime.token_latency_s if runtime.token_latency_s > 0 else 0.0
    return ReplicaCosts(
        ColdStartModel(schedule_s=schedule_s, artifact_bytes=artifact_bytes,
                       fetch_bytes_per_s=fetch_bytes_per_s, cache_hit_ratio=cache_hit_ratio,
                       load_s=runtime.load_time_s if load_s is None else load_s,
                       jitter_fraction=jitter_fraction),
        ServiceTimeModel(fixed_s=service_s, prefill_tokens_per_s=prefill_tokens_per_s,
                         decode_tokens_per_s=decode),
    )


def services_for(template: list[ModelService], workload: Workload) -> list[ModelService]:
    """One ModelService per workload model: by name when the spec defines it, else the first spec
    renamed (the usual case: one spec as the template for N synthetic models)."""
    by_name = {svc.name: svc for svc in template}
    if len(workload.models) == 1 and workload.models[0] not in by_name:
        services = [template[0]]
    else:
        services = [by_name.get(name) or replace(template[0], name=name) for name in workload.models]
    unused = sorted(set(by_name) - {s.name for s in services}) if len(template) > 1 else []
    if unused:  # the CLI names the workload's models after the spec's, so this is a library caller's
        log.warning("the spec's models %s get no traffic from the workload %s: not simulated",
                    unused, list(workload.models[:5]))
    return services


def make_controller(services: list[ModelService], prefer_batch: bool, timing: LoopTiming = WHOLE_SECONDS
                    ) -> Controller:
    """The batch (numpy) controller when asked for and every model uses KPA with the same windows and
    metric, else the scalar one.
    The batch windows assume reports at whole seconds; with other report times the scalar
    controller (the live aggregation code itself) places every sample."""
    windows = {(c.stable_window_s, c.panic_window_s, c.metric)
               for c in (policy_config(s.scaling) for s in services)}
    if (prefer_batch and timing.whole_seconds and all(s.scaling.policy == "kpa" for s in services)
            and len(windows) == 1):
        from sim.batch_control import BatchController

        return BatchController(services)
    return PolicyController(services)


@dataclass(frozen=True)
class Outcome:
    result: RunResult
    summary: Summary
    wall_s: float


CostsFor = Callable[[ModelService], ReplicaCosts]


def simulate(template: list[ModelService], workload: Workload, costs: ReplicaCosts | CostsFor, *,
             seed: int = 0, batch: bool = False, timing: LoopTiming = WHOLE_SECONDS) -> Outcome:
    """Run and summarise. `costs` is one ReplicaCosts for every model, or a function giving each
    model's from its spec (each its own load time and token rate). `timing` places the autoscaler's
    tick grid and the activator's reports on the workload's clock (state.LoopTiming)."""
    services = services_for(template, workload)
    if len(workload.models) == 1:
        workload = replace(workload, models=(services[0].name,))
    setups = []
    for svc in services:
        own = costs if isinstance(costs, ReplicaCosts) else costs(svc)
        setups.append(ModelSetup(svc, own.cold_start, own.service_time))
    started = time.perf_counter()
    engine = Engine(workload, setups, make_controller(services, batch, timing), seed=seed, timing=timing)
    result = engine.run()
    wall = time.perf_counter() - started
    log.info("simulated %d requests of %d models in %.2f s (%d events)", workload.requests,
             len(services), wall, result.events)
    return Outcome(result, summarize(result), wall)
