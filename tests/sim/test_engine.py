"""The engine on workloads small enough to compute by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sim.control import PolicyController
from sim.engine import Engine
from sim.models import ColdStartModel, ServiceTimeModel
from sim.report import summarize
from sim.state import QUEUED, REJECTED, SERVED, TIMED_OUT, WHOLE_SECONDS, LoopTiming, ModelSetup, RunResult
from sim.workloads import Workload
from zeroserve.spec import ModelService, QueueSpec, ScalingSpec


def workload(times: list[float], owners: list[int] | None = None, models: int = 1,
             generated: list[int] | None = None) -> Workload:
    n = len(times)
    return Workload(
        tuple(f"m{i}" for i in range(models)),
        np.asarray(times, dtype=np.float64),
        np.asarray(owners or [0] * n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        np.asarray(generated or [0] * n, dtype=np.int64),
    )


def engine(times: list[float], *, load_s: float = 5.0, service_s: float = 1.0,
           owners: list[int] | None = None, models: int = 1, scaling: ScalingSpec | None = None,
           queue: QueueSpec | None = None, service: ServiceTimeModel | None = None,
           generated: list[int] | None = None, tick_lateness_s: float = 0.0, seed: int = 0,
           timing: LoopTiming = WHOLE_SECONDS) -> Engine:
    wl = workload(times, owners, models, generated)
    services = [ModelService(name, scaling=scaling or ScalingSpec(), queue=queue or QueueSpec())
                for name in wl.models]
    setups = [ModelSetup(s, ColdStartModel(load_s=load_s), service or ServiceTimeModel(fixed_s=service_s))
              for s in services]
    return Engine(wl, setups, PolicyController(services), seed=seed, tick_lateness_s=tick_lateness_s,
                  timing=timing)


def run(times: list[float], **kwargs: Any) -> RunResult:
    return engine(times, **kwargs).run()


def test_one_request_to_a_cold_model_pays_one_cold_start() -> None:
    result = run([0.0], load_s=5.0, service_s=1.0)
    assert result.cold_starts.tolist() == [1]
    assert result.from_zero.tolist() == [1]
    assert result.state.tolist() == [SERVED]
    assert bool(result.cold[0])
    latency = result.start_s[0] - result.arrival_s[0] + result.service_s[0]
    assert latency == pytest.approx(6.0)


def test_replica_is_removed_after_stable_window_plus_grace() -> None:
    # Load in seconds 0..6 (queued, then served until t=6): the last loaded bucket is second 6, the
    # 60 s window is empty from t=66, the first tick at or after it (t=66) turns the model inactive,
    # and the tick 30 s later (t=96) scales to zero. On exact ticks that is exactly 96 s.
    scaling = ScalingSpec(stable_window_s=60.0, scale_to_zero_grace_s=30.0)
    result = run([0.0], load_s=5.0, service_s=1.0, scaling=scaling)
    assert result.timeline_replicas.tolist() == [0, 1, 0]
    assert result.timeline_s[-1] == 96.0
    assert result.replica_s[0] == 96.0


def test_late_ticks_lose_the_knife_edges() -> None:
    # Live ticks wake a little late: "idle for >= window" and "inactive for >= grace" then fail at
    # the first tick that could pass them about half the time, each costing one more tick.
    scaling = ScalingSpec(stable_window_s=60.0, scale_to_zero_grace_s=30.0)
    removed = [float(run([0.0], scaling=scaling, tick_lateness_s=0.005, seed=seed).timeline_s[-1])
               for seed in range(12)]
    assert all(96.0 <= t <= 96.0 + 2 * scaling.tick_s + 0.01 for t in removed)
    assert len({round(t) for t in removed}) >= 2  # some runs win the coin tosses, some lose them


def test_the_tick_grid_lies_where_the_loop_started() -> None:
    # The same run as above with the loop's grid on odd seconds: the window is empty from t=66, the
    # first tick after it is t=67, and the grace ends at the tick 30 s later.
    scaling = ScalingSpec(stable_window_s=60.0, scale_to_zero_grace_s=30.0)
    result = run([0.0], load_s=5.0, service_s=1.0, scaling=scaling, timing=LoopTiming(tick_phase_s=1.0))
    assert result.timeline_s[-1] == 97.0


def test_report_phase_decides_which_bucket_holds_the_last_load() -> None:
    # The request is served from t=5 to t=5.8. Reports at whole seconds: the one at t=6 covers
    # (5, 6] and still sees load, so bucket 6 is the last loaded one, the window is empty at t=66,
    # and on an odd grid the model goes inactive at 67 and to zero at 97. Reports at s + 0.9: the
    # one at 5.9 covers the end of the request (bucket 5), the one at 6.9 sees nothing; at the tick
    # t=65 the report for bucket 65 has not come yet, which the aggregation leaves out of the window
    # (no report is not zero load): buckets 6..64 are empty, inactive at 65, zero at 95.
    scaling = ScalingSpec(stable_window_s=60.0, scale_to_zero_grace_s=30.0)
    common: dict[str, Any] = {"load_s": 5.0, "service_s": 0.8, "scaling": scaling}
    assert run([0.0], timing=LoopTiming(tick_phase_s=1.0), **common).timeline_s[-1] == 97.0
    late = LoopTiming(tick_phase_s=1.0, report_phase_s=0.9)
    assert run([0.0], timing=late, **common).timeline_s[-1] == 95.0
    with pytest.raises(ValueError, match="period"):
        engine([0.0], timing=LoopTiming(report_phase_s=1.0))


def test_a_drifting_reporter_skips_a_bucket() -> None:
    # Reports every 1.01 s from t=0.5: report 49 is at 49.99 (bucket 49), report 50 at 51.0
    # (bucket 51): bucket 50 never gets a report. A request served in (50.1, 50.9) falls wholly in
    # report 50's period, whose sample lands in bucket 51; the model still sees it and scales.
    timing = LoopTiming(report_phase_s=0.5, report_period_s=1.01)
    eng = engine([50.1], load_s=0.0, service_s=0.8, timing=timing)
    assert eng.report_index(50.0) == 49 and math.floor(eng.report_time(50)) == 51
    result = eng.run()
    assert result.cold_starts.tolist() == [1]
    assert result.state.tolist() == [SERVED]


def test_scale_down_removes_the_newest_ready_replica() -> None:
    # As the local backend does (and a ReplicaSet): the newest ready replica goes even when it is
    # the busy one; it drains. The least busy one would have been the older, idle replica.
    eng = engine([0.0])
    m = eng.models[0]
    eng._scale(m, 1, 0.0)
    eng._scale(m, 2, 1.0)
    older, newer = m.starting
    for replica in (older, newer):
        eng._on_ready(replica, 10.0)
    newer.inflight = 1
    eng._scale(m, 1, 20.0)
    assert m.ready == [older]
    assert m.draining == [newer]


def test_shorter_window_and_grace_scale_to_zero_sooner() -> None:
    scaling = ScalingSpec(stable_window_s=10.0, scale_to_zero_grace_s=0.0)
    result = run([0.0], load_s=5.0, service_s=1.0, scaling=scaling)
    # Window empty at t=16, where the model turns inactive; even a zero grace is served at the next
    # tick, as in Knative (going inactive and scaling to zero are two reconciliations).
    assert result.timeline_s[-1] == 18.0


def test_warm_requests_do_not_wait() -> None:
    result = run([0.0, 10.0, 20.0], load_s=5.0, service_s=1.0)
    assert result.cold.tolist() == [True, False, False]
    assert result.start_s[1:].tolist() == [10.0, 20.0]
    assert result.cold_starts.tolist() == [1]


def test_queue_timeouts_are_lost_requests() -> None:
    # The replica needs 20 s; requests wait at most 5 s: the first three are lost, the late one served.
    result = run([0.0, 1.0, 2.0, 30.0], load_s=20.0, service_s=1.0, queue=QueueSpec(timeout_s=5.0))
    assert result.state.tolist() == [TIMED_OUT, TIMED_OUT, TIMED_OUT, SERVED]
    summary = summarize(result)
    assert summary.lost_timeout == 3
    assert summary.served == 1
    assert result.cold_starts.tolist() == [1]


def test_full_queue_rejects() -> None:
    result = run([0.0, 0.1, 0.2], load_s=5.0, queue=QueueSpec(max_queued=2))
    assert result.state.tolist() == [SERVED, SERVED, REJECTED]
    assert summarize(result).lost_rejected == 1


def test_container_concurrency_queues_behind_a_busy_replica() -> None:
    # One slot per replica, max one replica: the second request waits for the first to finish.
    scaling = ScalingSpec(container_concurrency=1, target=1.0, max_replicas=1)
    result = run([0.0, 0.5], load_s=2.0, service_s=3.0, scaling=scaling)
    assert result.start_s.tolist() == [2.0, 5.0]
    assert result.cold.tolist() == [True, True]


def test_token_service_time() -> None:
    service = ServiceTimeModel(fixed_s=0.5, decode_tokens_per_s=100.0)
    result = run([0.0], load_s=1.0, service=service, generated=[200])
    assert result.service_s[0] == pytest.approx(2.5)


def test_a_burst_from_zero_scales_past_one_replica() -> None:
    # 40 requests at once against a target of 10 x 70 %: the panic window asks for several replicas.
    scaling = ScalingSpec(target=10.0)
    result = run([0.01 * i for i in range(40)], load_s=5.0, service_s=10.0, scaling=scaling)
    assert result.cold_starts[0] > 1
    assert (result.state == SERVED).all()


def test_idle_models_are_not_ticked() -> None:
    # Model 0 is busy at t=0 and t=20000, model 1 only at t=10000. Between bursts nothing is active,
    # so ticks cover only ~100 s after each burst, not the 20,000 s span.
    result = run([0.0, 10000.0, 20000.0], owners=[0, 1, 0], models=2)
    assert result.cold_starts.tolist() == [2, 1]
    assert result.ticks < 3 * 80
    assert result.events < 3 * 200


def test_no_traffic_no_events() -> None:
    result = run([5.0], owners=[1], models=3)
    per_burst_ticks = result.ticks
    assert result.cold_starts.tolist() == [0, 1, 0]
    assert per_burst_ticks < 80


def test_same_seed_same_result() -> None:
    times = sorted(np.random.default_rng(1).uniform(0, 600, 200).tolist())
    first = summarize(run(times, load_s=3.0))
    second = summarize(run(times, load_s=3.0))
    assert first == second
    assert first.served == 200
    assert QUEUED not in run(times).state.tolist()
