"""The idle-time histogram policy: its windows from known histograms, its fallback, and in the engine."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from autoscaler import histogram, policy
from autoscaler.histogram import HistogramConfig, HistogramState
from autoscaler.policy import Observation, PolicyState
from sim.control import PolicyController
from sim.engine import Engine
from sim.models import ColdStartModel, ServiceTimeModel
from sim.report import summarize
from sim.state import ModelSetup
from sim.workloads import Workload
from zeroserve.spec import ModelService, ScalingSpec

CONFIG = HistogramConfig()


def with_idle_times(seconds: list[float], config: HistogramConfig = CONFIG) -> HistogramState:
    state = HistogramState()
    for s in seconds:
        state = histogram.record_idle(config, state, s)
    return state


def test_windows_from_a_one_bin_histogram() -> None:
    # 20 idle times of 10.5 minutes: all in bin 10. Pre-warm at the bin's lower edge minus 10 %,
    # keep alive to its upper edge plus 10 %.
    learned = histogram.windows(CONFIG, with_idle_times([630.0] * 20))
    assert learned is not None
    assert learned.prewarm_s == pytest.approx(600.0 * 0.9)
    assert learned.keepalive_end_s == pytest.approx(660.0 * 1.1)


def test_windows_use_the_5th_and_99th_percentiles() -> None:
    # 100 idle times: 4 at 1 min, 95 at 5 min, 1 at 30 min. p5 falls in the 5-minute bin, p99 too;
    # the single 30-minute outlier is beyond the 99th percentile and does not stretch keep-alive.
    state = with_idle_times([65.0] * 4 + [310.0] * 95 + [1810.0])
    learned = histogram.windows(CONFIG, state)
    assert learned is not None
    assert learned.prewarm_s == pytest.approx(300.0 * 0.9)
    assert learned.keepalive_end_s == pytest.approx(360.0 * 1.1)


def test_too_few_idle_times_fall_back() -> None:
    assert histogram.windows(CONFIG, with_idle_times([630.0] * 9)) is None


def test_flat_histogram_falls_back() -> None:
    # One idle time in every bin: CV of the counts is 0, nothing to learn.
    state = with_idle_times([60.0 * b + 1.0 for b in range(CONFIG.bins)])
    assert not histogram.representative(CONFIG, state)


def test_mostly_out_of_bounds_falls_back() -> None:
    state = with_idle_times([630.0] * 10 + [5 * 3600.0] * 11)
    assert state.out_of_bounds == 11
    assert histogram.windows(CONFIG, state) is None


def test_fallback_decides_exactly_as_kpa() -> None:
    kpa_state = PolicyState()
    hist_state = HistogramState()
    for step, (value, ready) in enumerate([(5.0, 0), (5.0, 1), (0.0, 1), (0.0, 1)]):
        now = 2.0 * step
        obs = Observation(value, value, ready, poked=step == 0)
        expected, kpa_state = policy.decide(CONFIG.kpa, kpa_state, obs, now)
        got, hist_state = histogram.decide(CONFIG, hist_state, obs, now)
        assert got == expected
        assert hist_state.kpa == kpa_state


def test_learned_windows_drive_an_idle_model() -> None:
    state = replace(with_idle_times([630.0] * 20), busy=True, last_busy_s=1000.0)
    idle = Observation(0.0, 0.0, 1)
    # Just after the burst: unload (pre-warm window 540 s not reached yet).
    result, state = histogram.decide(CONFIG, state, idle, 1002.0)
    assert result.desired == 0
    assert histogram.next_decision_at(CONFIG, state, 1002.0) == pytest.approx(1540.0)
    result, state = histogram.decide(CONFIG, state, Observation(0.0, 0.0, 0), 1540.0)
    assert result.desired == 1
    result, state = histogram.decide(CONFIG, state, Observation(0.0, 0.0, 1), 1000.0 + 727.0)
    assert result.desired == 0


def test_traffic_records_one_idle_time_per_gap() -> None:
    state = HistogramState()
    busy, idle = Observation(1.0, 1.0, 1), Observation(0.0, 0.0, 1)
    for now, obs in [(0.0, busy), (2.0, idle), (4.0, idle), (130.0, busy), (132.0, busy)]:
        _, state = histogram.decide(CONFIG, state, obs, now)
    assert state.samples == 1
    assert state.counts[2] == 1  # 130 - 0 s idle: the 2-3 minute bin


def test_engine_learns_a_periodic_model() -> None:
    # One request every 10 minutes for 5 hours; a cold start costs 5 s. KPA keeps a replica ~96 s
    # after each request and makes every request wait; the histogram pre-warms before each arrival
    # once it has seen 10 gaps, and holds no replica through most of each gap.
    times = np.arange(0.0, 5 * 3600.0, 600.0)
    wl = Workload(("m",), times, np.zeros(times.size, dtype=np.int64), np.zeros(times.size, dtype=np.int64),
                  np.zeros(times.size, dtype=np.int64))
    summaries = {}
    for name in ("kpa", "histogram"):
        svc = ModelService("m", scaling=ScalingSpec(policy=name))
        setup = ModelSetup(svc, ColdStartModel(load_s=5.0), ServiceTimeModel(fixed_s=1.0))
        summaries[name] = summarize(Engine(wl, [setup], PolicyController([svc])).run())
    kpa, hist = summaries["kpa"], summaries["histogram"]
    assert kpa.cold_wait_fraction == 1.0
    assert hist.cold_wait_fraction < 0.5
    assert hist.served == kpa.served == times.size
