"""The Autoscaler on a real event loop with a recording backend.

Scenario time is a virtual clock the test advances; the event loop is real, so scale calls are real
tasks. The poke test measures wall time on the real loop, with ticks far apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from recording_backend import RecordingBackend

from autoscaler.aggregation import StatSample
from autoscaler.config import policy_config_from_spec
from autoscaler.loop import Autoscaler
from autoscaler.model_policy import HistogramPolicy
from autoscaler.policy import PolicyConfig
from zeroserve.spec import ModelService, ScalingSpec


class VirtualClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def service(name: str = "m", **scaling: object) -> ModelService:
    return ModelService(name=name, scaling=replace(ScalingSpec(), **scaling))  # type: ignore[arg-type]


async def settle() -> None:
    """Let scale tasks started by a decision run to completion."""
    for _ in range(5):
        await asyncio.sleep(0)


class Harness:
    def __init__(self, *services: ModelService, follow: bool = True, **kwargs: float) -> None:
        self.clock = VirtualClock()
        self.backend = RecordingBackend(follow=follow)
        self.registry = CollectorRegistry()
        self.scaler = Autoscaler(self.backend, clock=self.clock, registry=self.registry, **kwargs)
        for svc in services:
            self.backend.register(svc)
            self.scaler.upsert(svc)

    async def run_for(self, seconds: float, load: dict[str, float] | None, tick_s: float = 2.0) -> None:
        """Advance virtual time second by second: report `load` (None: no report), tick every tick_s."""
        end = self.clock.now + seconds
        next_tick = self.clock.now + tick_s
        while self.clock.now < end:
            self.clock.now += 1.0
            if load is not None:
                self.scaler.ingest(
                    StatSample(model, "act-0", self.clock.now, value, value) for model, value in load.items()
                )
            if self.clock.now >= next_tick:
                next_tick += tick_s
                self.scaler.tick()
                await settle()


def test_spec_maps_to_knative_targets() -> None:
    config = policy_config_from_spec(ScalingSpec(target=10, target_utilization=0.5, container_concurrency=4))
    assert (config.target_value, config.total_value) == (2.0, 4.0)
    rps = policy_config_from_spec(ScalingSpec(metric="rps", target=200, target_utilization=0.7))
    assert rps.metric == "rps" and rps.target_value == pytest.approx(140.0)
    default = policy_config_from_spec(ScalingSpec())
    assert default == PolicyConfig(target_value=default.target_value)  # defaults agree with Knative's
    assert default.target_value == pytest.approx(70.0)


async def test_first_tick_brings_a_new_model_to_its_initial_scale() -> None:
    h = Harness(service(initial_scale=2))
    h.scaler.tick()
    await settle()
    assert h.backend.scales_of("m") == [2]
    assert h.backend.prefetched == ["m"]


async def test_scale_is_called_only_when_the_decision_changes() -> None:
    h = Harness(service(target=10, target_utilization=1.0))
    await h.run_for(120, {"m": 30.0})
    assert h.backend.scales_of("m") == [3]  # 60 ticks, one decision: one call
    await h.run_for(120, {"m": 50.0})
    assert h.backend.scales_of("m") == [3, 4, 5]  # the stable window climbs through 40
    status = h.scaler.status()["models"]["m"]
    assert status["desired"] == 5 and status["ready"] == 5 and status["stable"] == 50.0


async def test_no_traffic_scales_to_zero_after_window_plus_grace() -> None:
    h = Harness(service(stable_window_s=60.0, scale_to_zero_grace_s=30.0))
    await h.run_for(30, {"m": 5.0})
    quiet_at = h.clock.now
    zero_at: list[float] = []
    h.backend.on_scale = lambda call: zero_at.append(h.clock.now) if call.replicas == 0 else None
    await h.run_for(130, {"m": 0.0})
    assert h.backend.scales_of("m") == [1, 0]
    assert 90.0 <= zero_at[0] - quiet_at <= 94.0


async def test_stale_reports_do_not_scale_down() -> None:
    h = Harness(service(target=10, target_utilization=1.0, min_replicas=1), stale_after_s=10.0)
    await h.run_for(90, {"m": 50.0})
    assert h.backend.scales_of("m")[-1] == 5
    # Every activator goes quiet: the windows would say "load fell", but nobody refreshes them.
    await h.run_for(120, None)
    assert h.backend.scales_of("m")[-1] == 5
    assert h.scaler.status()["stale"] is True
    assert h.scaler.status()["models"]["m"]["valid"] is False
    # Reports resume (and say there is no load): now it scales down, at most halving per tick.
    await h.run_for(90, {"m": 0.0})
    assert h.backend.scales_of("m")[-1] == 1
    downs = h.backend.scales_of("m")[1:]
    assert all(b >= a // 2 for a, b in itertools.pairwise(downs))


async def test_stale_data_still_lets_a_poke_start_a_model_at_zero() -> None:
    h = Harness(service(initial_scale=0, activation_scale=2))
    h.scaler.tick()
    await settle()
    assert h.backend.scales_of("m") == []
    h.scaler.poke("m")  # no loop is running run(): the next tick sees the poke
    h.scaler.tick()
    await settle()
    assert h.backend.scales_of("m") == [2]


async def test_single_writer_one_call_per_model_at_a_time_and_newest_wins() -> None:
    h = Harness(service(target=1, target_utilization=1.0, max_scale_up_rate=1000.0), follow=False)
    h.backend.scale_delay_s = 0.05
    h.backend.ready["m"] = 1
    h.scaler.tick()  # initial scale 1, still in flight ...
    for load in (5.0, 9.0, 7.0):
        h.clock.now += 1.0
        h.scaler.ingest([StatSample("m", "a", h.clock.now, load, load)])
        h.scaler.tick()  # ... while the decisions keep changing
        await asyncio.sleep(0)
    # Wait for the chain of calls to settle (the newest decision sent, nothing in flight) rather
    # than for a fixed time: a stalled loop could wake this test before the follow-up call starts.
    desired = h.scaler.status()["models"]["m"]["desired"]
    deadline = time.monotonic() + 10.0
    while h.backend.scales_of("m")[-1] != desired or h.backend.in_flight.get("m", 0):
        assert time.monotonic() < deadline, h.backend.calls
        await asyncio.sleep(0.01)
    calls = h.backend.scales_of("m")
    assert h.backend.max_in_flight == 1
    assert calls[0] == 1 and calls[-1] == h.scaler.status()["models"]["m"]["desired"]
    assert len(calls) < 4  # intermediate decisions were coalesced


async def test_failed_scale_is_retried_on_the_next_tick() -> None:
    h = Harness(service())
    h.backend.fail_next = 1
    h.scaler.tick()
    await settle()
    h.clock.now += 2.0
    h.scaler.tick()
    await settle()
    assert h.backend.scales_of("m") == [1, 1]
    assert h.backend.targets["m"] == 1


async def test_backend_that_lost_the_target_is_resynced() -> None:
    h = Harness(service(min_replicas=2), resync_s=10.0)
    h.scaler.tick()
    await settle()
    h.backend.targets["m"] = 0  # e.g. the backend restarted
    h.clock.now += 11.0
    h.scaler.tick()
    await settle()
    assert h.backend.scales_of("m") == [2, 2]


async def test_remove_and_reuse_of_rows() -> None:
    h = Harness(service("a", min_replicas=1), service("b", min_replicas=2))
    h.scaler.tick()
    await settle()
    h.scaler.remove("a")
    h.scaler.upsert(service("c", min_replicas=3))
    h.clock.now += 2.0
    h.scaler.tick()
    await settle()
    assert sorted(h.scaler.status()["models"]) == ["b", "c"]
    assert h.backend.scales_of("c") == [3]
    assert h.backend.scales_of("b") == [2]


async def test_upsert_changes_take_effect() -> None:
    h = Harness(service(min_replicas=1))
    h.scaler.tick()
    await settle()
    h.scaler.upsert(service(min_replicas=4, scale_down_delay_s=10.0))
    h.clock.now += 2.0
    h.scaler.tick()
    await settle()
    assert h.backend.scales_of("m") == [1, 4]


async def test_histogram_policy_is_chosen_by_name() -> None:
    h = Harness(service("h", policy="histogram", min_replicas=1), service("k"))
    h.scaler.tick()
    await settle()
    model = h.scaler._models["h"]
    assert isinstance(model.policy, HistogramPolicy)
    assert h.scaler._models["k"].policy is None
    assert h.backend.scales_of("h") == [1]
    assert h.scaler.status()["models"]["h"]["policy"] == "histogram"


async def test_decisions_are_prometheus_metrics() -> None:
    h = Harness(service(target=10, target_utilization=1.0))
    await h.run_for(20, {"m": 20.0})
    text = generate_latest(h.registry).decode()
    assert 'zeroserve_desired_replicas{model="m"} 2.0' in text
    assert 'zeroserve_ready_replicas{model="m"} 2.0' in text
    assert 'zeroserve_panic_mode{model="m"}' in text
    assert 'zeroserve_observed_concurrency{model="m",window="stable"} 20.0' in text
    assert 'zeroserve_observed_concurrency{model="m",window="panic"} 20.0' in text
    assert 'zeroserve_excess_burst_capacity{model="m"}' in text
    # A second autoscaler on the same registry must not clash with the first.
    Autoscaler(RecordingBackend(), registry=h.registry)
    assert generate_latest(h.registry).decode().count('zeroserve_desired_replicas{model="m"}') == 1


async def test_poke_reaches_backend_scale_within_milliseconds() -> None:
    backend = RecordingBackend()
    scaler = Autoscaler(backend, tick_s=3600.0, registry=CollectorRegistry())  # ticks can't help
    names = [f"m{i}" for i in range(20)]
    for name in names:
        scaler.upsert(service(name, initial_scale=0))
    run = asyncio.create_task(scaler.run())
    try:
        await asyncio.sleep(0.01)  # the first tick has run
        latencies = []
        for name in names:
            arrived = asyncio.Event()
            backend.on_scale = lambda _call, ev=arrived: ev.set()
            poked_at = time.perf_counter()
            scaler.poke(name)
            await asyncio.wait_for(arrived.wait(), timeout=1.0)
            latencies.append((backend.calls[-1].at_perf_s - poked_at) * 1e3)
            assert backend.calls[-1].model == name and backend.calls[-1].replicas == 1
        assert statistics.median(latencies) < 5.0, latencies
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


@pytest.mark.parametrize(
    "scaling",
    [
        ScalingSpec(),
        ScalingSpec(metric="rps", target=200.0, min_replicas=1, max_replicas=9, scale_down_delay_s=30.0),
        ScalingSpec(
            target=4.0, container_concurrency=2, target_burst_capacity=-1, scale_to_zero_retention_s=5
        ),
    ],
)
def test_simulator_reads_specs_as_the_live_loop_does(scaling: ScalingSpec) -> None:
    sim_control = pytest.importorskip("sim.control")
    assert sim_control.policy_config(scaling) == policy_config_from_spec(scaling)


async def test_poke_from_another_thread_is_handed_to_the_loop() -> None:
    backend = RecordingBackend()
    scaler = Autoscaler(backend, tick_s=3600.0, registry=CollectorRegistry())
    scaler.upsert(service("m", initial_scale=0))
    arrived = asyncio.Event()
    backend.on_scale = lambda call: arrived.set() if call.replicas > 0 else None
    run = asyncio.create_task(scaler.run())
    try:
        await asyncio.sleep(0.01)
        await asyncio.to_thread(scaler.poke, "m")
        await asyncio.wait_for(arrived.wait(), timeout=1.0)
        assert backend.scales_of("m")[-1] == 1
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
