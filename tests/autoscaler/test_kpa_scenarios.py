"""Knative's documented behaviours as time-stepping scenarios on virtual time.

An activator reports the model's concurrency every second into the real windows; every 2 s tick the
policy decides; replicas become ready `ready_delay_s` after they are asked for. No sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from autoscaler.aggregation import ModelWindows, StatSample
from autoscaler.policy import Observation, PolicyConfig, ScaleResult, decide, initial_state

DEFAULT = PolicyConfig()  # Knative defaults: target 100 x 0.7, 60 s window, 10 % panic, 2x threshold
TARGET = DEFAULT.target_value


@dataclass
class Tick:
    at: float
    result: ScaleResult
    ready: int
    stable: float
    panic: float


@dataclass
class Scenario:
    config: PolicyConfig
    ready: int
    now: float = 10_000.0
    ready_delay_s: float = 0.0
    history: list[Tick] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.windows = ModelWindows(self.config.stable_window_s, self.config.panic_window_s)
        self.state = initial_state(self.config, self.ready, self.now)
        self.pending: list[tuple[float, int]] = []  # (ready at, replicas)

    def run(self, seconds: float, load: Callable[[float], float | None], tick_s: float = 2.0) -> None:
        """Advance `seconds`; load(t) is the concurrency the activator reports (None: no report)."""
        end = self.now + seconds
        next_tick = self.now + tick_s
        while self.now < end:
            self.now += 1.0
            value = load(self.now)
            if value is not None:
                self.windows.record(StatSample("m", "act-0", self.now, value, value))
            for at, replicas in list(self.pending):
                if at <= self.now:
                    self.ready = replicas
                    self.pending.remove((at, replicas))
            if self.now >= next_tick:
                next_tick += tick_s
                self.tick()

    def tick(self) -> None:
        stable, panic = self.windows.observe(self.config.metric, self.now)
        result, self.state = decide(self.config, self.state, Observation(stable, panic, self.ready), self.now)
        if result.valid:
            self.pending.append((self.now + self.ready_delay_s, result.desired))
        self.history.append(Tick(self.now, result, self.ready, stable, panic))

    @property
    def last(self) -> Tick:
        return self.history[-1]


def constant(value: float) -> Callable[[float], float]:
    return lambda _t: value


def test_steady_load_settles_on_load_over_target() -> None:
    s = Scenario(DEFAULT, ready=1)
    s.run(120, constant(4 * TARGET))
    assert s.last.result.desired == 4
    assert not s.last.result.panic


def test_burst_that_doubles_load_enters_panic_and_scales_up_at_once() -> None:
    s = Scenario(DEFAULT, ready=4, ready_delay_s=10.0)  # new replicas take 10 s to become ready
    s.run(120, constant(4 * TARGET))
    assert s.last.result.desired == 4 and not s.last.result.panic
    burst_at = s.now
    s.run(20, constant(8 * TARGET))
    panicked = [t for t in s.history if t.at > burst_at and t.result.panic]
    assert panicked, "doubling the load must enter panic mode"
    first = panicked[0]
    # As soon as the panic window holds the doubled load (6 s of it), the panic count is taken
    # whole: 8 replicas in one step, while the stable window alone would still ask for ~5.
    assert first.at - burst_at <= DEFAULT.panic_window_s + 2.0
    assert first.result.desired == 8
    assert first.stable < 6 * TARGET


def test_panic_exits_only_after_a_full_stable_window_without_crossing_the_threshold() -> None:
    s = Scenario(DEFAULT, ready=4, ready_delay_s=10.0)
    s.run(120, constant(4 * TARGET))
    s.run(10, constant(8 * TARGET))
    assert s.last.result.panic
    last_over = s.state.panic_since
    assert last_over is not None
    s.run(200, constant(0.0))  # load gone at once
    after = [t for t in s.history if t.at > last_over]
    in_panic = [t for t in after if t.result.panic]
    assert in_panic and all(t.at <= last_over + DEFAULT.stable_window_s for t in in_panic)
    assert all(t.result.desired >= 8 for t in in_panic)  # never down while panicking
    out = next(t for t in after if not t.result.panic)
    assert out.at > last_over + DEFAULT.stable_window_s
    assert out.at <= last_over + DEFAULT.stable_window_s + 2.0


def test_scale_down_is_limited_to_half_of_ready_per_tick() -> None:
    config = replace(DEFAULT, min_scale=1)
    state = replace(initial_state(config, 16, 0.0), panic_since=None, activity_since=-1000.0)
    ready, now, seen = 16, 0.0, []
    while ready > 1:
        now += 2.0
        result, state = decide(config, state, Observation(0.0, 0.0, ready), now)
        assert result.desired >= ready // 2
        ready = result.desired
        seen.append(ready)
    assert seen == [8, 4, 2, 1]


def test_scale_down_delay_holds_the_maximum_over_the_delay() -> None:
    config = replace(DEFAULT, scale_down_delay_s=30.0, min_scale=1)
    s = Scenario(config, ready=1)
    s.run(120, constant(6 * TARGET))
    assert s.last.result.desired == 6
    drop_at = s.now
    s.run(200, constant(1.0))
    down = [t for t in s.history if t.at > drop_at and t.result.desired < 6]
    assert down, "the load fell: the model must scale down in the end"
    # The stable window says "fewer" long before; the delay keeps 6 until 30 s after that.
    assert down[0].at >= drop_at + 30.0
    held = [t for t in s.history if drop_at < t.at < down[0].at]
    assert all(t.result.desired == 6 for t in held)


def test_no_traffic_for_stable_window_plus_grace_scales_to_zero() -> None:
    s = Scenario(DEFAULT, ready=1)
    s.run(60, constant(5.0))
    quiet_at = s.now
    s.run(200, constant(0.0))
    zero = next(t for t in s.history if t.result.desired == 0)
    idle_s = zero.at - quiet_at
    needed = DEFAULT.stable_window_s + DEFAULT.scale_to_zero_grace_s
    assert needed <= idle_s <= needed + 2 * 2.0  # two ticks of slack: window end + grace end
    before = [t for t in s.history if quiet_at < t.at < zero.at]
    assert all(t.result.desired == 1 for t in before)


def test_no_reports_at_all_also_scales_to_zero() -> None:
    s = Scenario(DEFAULT, ready=1)
    s.run(60, constant(5.0))
    quiet_at = s.now
    s.run(200, lambda _t: None)  # the activator reports nothing once the model is idle
    zero = next(t for t in s.history if t.result.desired == 0)
    assert zero.at - quiet_at >= DEFAULT.stable_window_s + DEFAULT.scale_to_zero_grace_s


def test_traffic_during_the_grace_period_keeps_the_replica() -> None:
    s = Scenario(DEFAULT, ready=1)
    s.run(60, constant(5.0))
    s.run(75, constant(0.0))  # idle window over, grace running
    activity_in_grace = s.state.activity
    s.run(4, constant(5.0))
    assert (activity_in_grace, s.state.activity) == ("inactive", "active")
    s.run(60, constant(5.0))
    assert all(t.result.desired >= 1 for t in s.history)


def test_new_model_at_initial_scale_without_traffic_goes_to_zero() -> None:
    s = Scenario(DEFAULT, ready=0, ready_delay_s=4.0)
    s.run(4, constant(0.0))
    assert s.history[0].result.desired == 1  # initial scale first
    s.run(200, constant(0.0))
    zero = next(t for t in s.history if t.result.desired == 0)
    assert zero.at - s.history[0].at >= DEFAULT.stable_window_s + DEFAULT.scale_to_zero_grace_s


def test_rps_metric_scales_on_request_rate() -> None:
    config = replace(DEFAULT, metric="rps", target_value=200 * 0.7, total_value=200)
    s = Scenario(config, ready=1)
    s.run(120, constant(3 * 140.0))  # the harness reports requests == concurrency
    assert s.last.result.desired == 3
