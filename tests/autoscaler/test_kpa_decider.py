"""Knative's decider cases (serving pkg/autoscaler/scaling/autoscaler_test.go) as tables, on our policy.

Knative's tests build a DeciderSpec with TotalValue = TargetValue / 0.75, panic threshold 2x, rate
limits 10x up and down and a 60 s stable window; `knative_config` does the same here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from autoscaler.policy import (
    PolicyConfig,
    PolicyState,
    decider,
    excess_burst_capacity,
    initial_state,
)

UTILIZATION = 0.75


def knative_config(target: float, tbc: float, **overrides: Any) -> PolicyConfig:
    base = PolicyConfig(
        target_value=target,
        total_value=target / UTILIZATION,
        target_burst_capacity=tbc,
        panic_threshold_percent=200.0,
        max_scale_up_rate=10.0,
        max_scale_down_rate=10.0,
        stable_window_s=60.0,
    )
    return replace(base, **overrides)


def expected_ebc(target: float, tbc: float, concurrency: float, pods: int) -> int:
    return math.floor(target / UTILIZATION * pods - tbc - concurrency)


class Stepper:
    """Holds the decider state between calls, like Knative's autoscaler struct."""

    def __init__(self, config: PolicyConfig, state: PolicyState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else initial_state(config, 1, 0.0)

    def scale(self, stable: float, panic: float, ready: int, now: float) -> tuple[int, int]:
        desired, self.state = decider(self.config, self.state, stable, panic, ready, now)
        return desired, excess_burst_capacity(self.config, ready, panic)


@dataclass(frozen=True)
class Case:
    label: str
    config: PolicyConfig
    stable: float
    panic: float
    ready: int
    want: int
    want_ebc: int
    state: PolicyState = field(default_factory=PolicyState)


NOW = 1000.0
PANICKING_FOR_5S = PolicyState(activity="active", panic_since=NOW - 5, max_panic_pods=5, desired=5)

CASES = [
    Case("no data at zero", knative_config(10, 100), 0, 0, 1, 0, expected_ebc(10, 100, 0, 1)),
    Case("unlimited burst capacity", knative_config(181, -1), 21, 26, 1, 1, -1),
    Case("zero burst capacity", knative_config(10, 0), 50, 49, 1, 5, 0),
    Case("stable, no change", knative_config(10, 100), 50, 50, 1, 5, expected_ebc(10, 100, 50, 1)),
    Case(
        "panic: stable larger than panic",
        knative_config(1, 100),
        50,
        30,
        5,
        50,
        expected_ebc(1, 100, 30, 5),
        PANICKING_FOR_5S,
    ),
    Case(
        "panic: stable less than panic",
        knative_config(1, 100),
        20,
        30,
        5,
        30,
        expected_ebc(1, 100, 30, 5),
        PANICKING_FOR_5S,
    ),
    Case("already scaled", knative_config(10, 100), 50, 50, 5, 5, expected_ebc(10, 100, 50, 5)),
    Case(
        "small scale-up rate still adds a pod",
        knative_config(1, 1982, max_scale_up_rate=1.1),
        3,
        3.1,
        2,
        3,
        expected_ebc(1, 1982, 3.1, 2),
    ),
    Case(
        "small scale-down rate",
        knative_config(10, 1982, max_scale_down_rate=1.1),
        1,
        1,
        100,
        90,
        expected_ebc(10, 1982, 1, 100),
    ),
    Case(
        "unreachable scales down without limit",
        knative_config(10, 1982, max_scale_down_rate=1.1, reachable=False),
        1,
        1,
        100,
        1,
        expected_ebc(10, 1982, 1, 100),
    ),
    Case("panic doubles pods", knative_config(10, 84), 50, 100, 1, 10, expected_ebc(10, 84, 100, 1)),
    Case("stable increase", knative_config(10, 101), 50, 10, 1, 5, expected_ebc(10, 101, 10, 1)),
    Case("stable increase more", knative_config(10, 101), 100, 10, 1, 10, expected_ebc(10, 101, 10, 1)),
    Case("stable decrease", knative_config(10, 98), 50, 50, 8, 5, expected_ebc(10, 98, 50, 8)),
    Case("rps values", knative_config(10, 101, metric="rps"), 100, 99, 1, 10, expected_ebc(10, 101, 99, 1)),
    Case("no traffic -> 0", knative_config(10, 75), 0, 0, 1, 0, expected_ebc(10, 75, 0, 1)),
    Case(
        "activation scale, no load",
        knative_config(10, 75, activation_scale=2),
        0,
        0,
        1,
        0,
        expected_ebc(10, 75, 0, 1),
    ),
    Case(
        "activation scale, some load",
        knative_config(10, 75, activation_scale=2),
        1,
        0,
        1,
        2,
        expected_ebc(10, 75, 0, 1),
    ),
    Case("rate limit up x10", knative_config(10, 61), 1000, 1001, 1, 10, expected_ebc(10, 61, 1001, 1)),
    Case(
        "rate limit up x10 again", knative_config(10, 61), 1000, 1001, 10, 100, expected_ebc(10, 61, 1001, 10)
    ),
    Case("rate limit down /10", knative_config(10, 61), 1, 1, 100, 10, expected_ebc(10, 61, 1, 100)),
    Case("rate limit down /10 again", knative_config(10, 61), 1, 1, 10, 1, expected_ebc(10, 61, 1, 10)),
    Case(
        "no ready pods counts as one", knative_config(10, 81), 1000, 888, 0, 10, expected_ebc(10, 81, 888, 0)
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_decider_table(case: Case) -> None:
    desired, ebc = Stepper(case.config, case.state).scale(case.stable, case.panic, case.ready, NOW)
    assert desired == case.want
    assert abs(ebc - case.want_ebc) <= 1  # Knative allows one off here for float rounding


def test_scale_down_delay_holds_the_maximum_of_the_delay_window() -> None:
    config = knative_config(10, 0, panic_threshold_percent=10_000.0, scale_down_delay_s=300.0)
    s = Stepper(config, PolicyState())
    assert s.scale(40, 40, 0, 2.0)[0] == 4
    assert s.scale(0, 0, 0, 300.0)[0] == 4  # five minutes at reduced load: still held
    assert s.scale(0, 0, 0, 302.0)[0] == 0  # the 4 scrolled out of the window
    # gradual: each value is held for the delay, then the next largest takes over
    assert s.scale(40, 40, 0, 540.0)[0] == 4
    assert s.scale(30, 30, 0, 600.0)[0] == 4
    assert s.scale(0, 0, 0, 660.0)[0] == 4
    assert s.scale(0, 0, 0, 840.0)[0] == 3
    assert s.scale(0, 0, 0, 900.0)[0] == 0


def test_zero_delay_scales_down_at_once() -> None:
    s = Stepper(knative_config(10, 0, panic_threshold_percent=10_000.0), PolicyState())
    assert s.scale(40, 40, 0, 0.0)[0] == 4
    assert s.scale(20, 20, 0, 0.5)[0] == 2


def test_unreachable_ignores_the_delay() -> None:
    config = knative_config(10, 0, panic_threshold_percent=10_000.0, scale_down_delay_s=300.0)
    s = Stepper(config, PolicyState())
    assert s.scale(40, 40, 0, 2.0)[0] == 4
    assert s.scale(0, 0, 0, 60.0)[0] == 4
    s.config = replace(config, reachable=False)
    assert s.scale(0, 0, 0, 62.0)[0] == 0


def test_unpanic_after_slow_increase() -> None:
    s = Stepper(knative_config(1, 98))
    start = NOW
    assert s.scale(11, 25, 10, start)[0] == 25
    assert s.state.panic_since == start
    assert s.scale(30, 41, 40, start + 30)[0] == 41
    assert s.state.panic_since == start  # 41 / 40 ready is under the 2x threshold
    assert s.scale(50, 56, 55, start + 62)[0] == 50  # a full stable window later: back to stable
    assert s.state.panic_since is None


def test_extend_panic_window() -> None:
    s = Stepper(knative_config(1, 98))
    assert s.scale(11, 25, 10, NOW)[0] == 25
    assert s.scale(30, 80, 40, NOW + 30)[0] == 80
    assert s.state.panic_since == NOW + 30


def test_panic_then_unpanic_scale_down() -> None:
    s = Stepper(knative_config(10, 93))
    assert s.scale(100, 100, 1, NOW)[0] == 10
    assert s.scale(100, 1000, 10, NOW)[0] == 100
    assert s.scale(1, 1, 10, NOW + 30)[0] == 100  # load gone, but no scale-down while panicking
    assert s.scale(1, 1, 10, NOW + 61)[0] == 1


def test_panic_tracks_exponential_growth_and_stabilizes() -> None:
    s = Stepper(knative_config(1, 101))
    assert s.scale(6, 6, 1, NOW)[0] == 6
    assert s.scale(36, 36, 6, NOW + 1)[0] == 36
    assert s.scale(216, 216, 36, NOW + 2)[0] == 216
    assert s.scale(1296, 1296, 216, NOW + 2)[0] == 1296
    assert s.scale(1296, 1296, 1296, NOW + 3)[0] == 1296


def test_update_target_keeps_state() -> None:
    s = Stepper(knative_config(10, 77))
    assert s.scale(100, 101, 1, NOW)[0] == 10
    s.config = knative_config(1, 71)
    assert s.scale(100, 101, 10, NOW)[0] == 100


@pytest.mark.parametrize(("ready", "panicking"), [(0, False), (1, False), (2, True), (7, True)])
def test_starts_in_panic_mode_with_more_than_one_ready(ready: int, panicking: bool) -> None:
    state = initial_state(PolicyConfig(), ready, NOW)
    assert state.panic is panicking
    assert state.max_panic_pods == ready
