"""The batch (numpy) controller decides exactly as the scalar one, which runs the live code path."""

from __future__ import annotations

from sim import workloads
from sim.batch_control import BatchController
from sim.control import PolicyController
from sim.scenario import costs_from_spec, make_controller, simulate
from sim.state import LoopTiming
from sim.traces import load_trace
from zeroserve.spec import ModelService, ScalingSpec


def test_batch_and_scalar_controllers_agree() -> None:
    # 20 bursty models for 30 minutes with token-driven service times: cold bursts, panics, pokes
    # in the same second, scale-downs and scale-to-zero all happen.
    wl = workloads.many_models(20, total_rate_per_s=3.0, duration_s=1800.0, on_s=60.0, off_s=240.0, seed=4,
                               tokens_from=load_trace("conv"))
    spec = [ModelService("llm", scaling=ScalingSpec(target=4.0, container_concurrency=4,
                                                    stable_window_s=30.0, scale_to_zero_grace_s=10.0))]
    costs = costs_from_spec(spec[0], load_s=8.0, prefill_tokens_per_s=10_000.0, decode_tokens_per_s=100.0)
    scalar = simulate(spec, wl, costs, batch=False).summary
    batch = simulate(spec, wl, costs, batch=True).summary
    assert scalar.cold_starts > 40 and scalar.scale_from_zero > 20 and scalar.pokes > 100
    assert batch == scalar
    # The tick grid somewhere else changes the run, the same way for both controllers.
    grid = LoopTiming(tick_phase_s=1.3)
    shifted = simulate(spec, wl, costs, batch=True, timing=grid).summary
    assert shifted == simulate(spec, wl, costs, batch=False, timing=grid).summary
    assert shifted != batch


def test_batch_and_scalar_controllers_agree_on_rps() -> None:
    # Requests are counted per one-second bucket (a poke's partial report adds its count to its
    # second's bucket): the batch windows must count the same way, not divide by a poke's period.
    wl = workloads.many_models(20, total_rate_per_s=3.0, duration_s=300.0, on_s=60.0, off_s=240.0, seed=4,
                               tokens_from=load_trace("conv"))
    spec = [ModelService("llm", scaling=ScalingSpec(metric="rps", target=0.5, container_concurrency=4,
                                                    stable_window_s=30.0, scale_to_zero_grace_s=10.0,
                                                    max_replicas=20))]
    costs = costs_from_spec(spec[0], load_s=8.0, prefill_tokens_per_s=10_000.0, decode_tokens_per_s=100.0)
    scalar = simulate(spec, wl, costs, batch=False).summary
    assert scalar.pokes > 20 and scalar.scale_from_zero > 10
    assert simulate(spec, wl, costs, batch=True).summary == scalar


def test_a_report_phase_uses_the_scalar_controller() -> None:
    # The batch windows assume reports at whole seconds; with another phase the live aggregation
    # code places every sample.
    spec = [ModelService("m")]
    assert isinstance(make_controller(spec, prefer_batch=True), BatchController)
    assert isinstance(make_controller(spec, True, LoopTiming(report_phase_s=0.4)), PolicyController)
    assert isinstance(make_controller(spec, True, LoopTiming(report_period_s=1.001)), PolicyController)


def test_histogram_models_use_the_scalar_controller() -> None:
    wl = workloads.poisson(0.05, 1800.0, seed=2)
    spec = [ModelService("m", scaling=ScalingSpec(policy="histogram"))]
    costs = costs_from_spec(spec[0], load_s=2.0, service_s=0.5)
    # Asking for the batch form is harmless: it applies to KPA only.
    assert simulate(spec, wl, costs, batch=True).summary == simulate(spec, wl, costs).summary
