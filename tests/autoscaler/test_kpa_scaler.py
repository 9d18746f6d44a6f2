"""Knative's scaler cases (serving pkg/reconciler/autoscaling/kpa/scaler_test.go) as a table.

Knative's fixture: stable window 5 min, grace period 60 s, progress deadline 121 s (+30 s buffer
gives the activation timeout). Knative's cases that depend on the activator *not* being in the path
yet (SKS serve mode, probes) have no counterpart: our activator is always in the path, and we always
wait the full grace period after a model goes inactive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from autoscaler.policy import (
    UNKNOWN_SCALE,
    Activity,
    Observation,
    PolicyConfig,
    PolicyState,
    decide,
    scaler,
)

STABLE_WINDOW_S = 300.0
GRACE_S = 60.0
ACTIVATION_TIMEOUT_S = 121.0 + 30.0
NOW = 10_000.0

CONFIG = PolicyConfig(
    stable_window_s=STABLE_WINDOW_S,
    scale_to_zero_grace_s=GRACE_S,
    activation_timeout_s=ACTIVATION_TIMEOUT_S,
)


@dataclass(frozen=True)
class Case:
    label: str
    start: int  # replicas running (and ready) before the call
    scale_to: int  # the decider's desired count
    activity: Activity
    for_s: float  # how long the model has been in `activity`
    want: int  # replicas after the call
    want_applied: bool = True
    want_activity: Activity | None = None
    min_scale: int = 0
    max_scale: int = 0
    initial_scale: int = 1
    initialized: bool = True
    retention_s: float = 0.0
    reachable: bool = True


CASES = [
    Case("waits to scale to zero just before the idle period", 1, 0, "active", STABLE_WINDOW_S - 1, 1),
    Case("scale to 1 while waiting for the idle period", 10, 0, "active", STABLE_WINDOW_S - 1, 1),
    Case(
        "idle period over: go inactive, keep replicas",
        1,
        0,
        "active",
        STABLE_WINDOW_S,
        1,
        want_applied=False,
        want_activity="inactive",
    ),
    Case("scale to zero after the grace period", 1, 0, "inactive", GRACE_S, 0),
    Case("waits just before the grace period", 1, 0, "inactive", GRACE_S - 1, 1, want_applied=False),
    Case(
        "grace over, 0 retention",
        1,
        0,
        "inactive",
        GRACE_S,
        0,
        retention_s=0.0,
    ),
    Case(
        "grace over but before the pod retention",
        1,
        0,
        "inactive",
        GRACE_S,
        1,
        want_applied=False,
        retention_s=2 * GRACE_S,
    ),
    Case("grace and retention over", 1, 0, "inactive", GRACE_S, 0, retention_s=GRACE_S),
    Case(
        "activating: wait for the replicas until the deadline",
        1,
        0,
        "activating",
        ACTIVATION_TIMEOUT_S / 2,
        1,
        want_applied=False,
    ),
    Case("activating past the deadline: zero", 1, 0, "activating", ACTIVATION_TIMEOUT_S + 1, 0),
    Case("down to minScale before grace", 10, 0, "inactive", GRACE_S - 1, 2, min_scale=2),
    Case("down to minScale after grace", 10, 0, "inactive", GRACE_S, 2, min_scale=2),
    Case("unreachable ignores minScale", 10, 0, "inactive", GRACE_S, 0, min_scale=2, reachable=False),
    Case(
        "unreachable ignores pod retention",
        1,
        0,
        "inactive",
        GRACE_S,
        0,
        retention_s=10 * GRACE_S,
        reachable=False,
    ),
    Case(
        "unreachable still waits the grace period",
        1,
        0,
        "inactive",
        GRACE_S - 1,
        1,
        want_applied=False,
        retention_s=10 * GRACE_S,
        reachable=False,
    ),
    Case("scales up", 1, 10, "active", 5, 10),
    Case("scales up to maxScale", 1, 10, "active", 5, 8, max_scale=8),
    Case("scales up an inactive model", 1, 10, "inactive", GRACE_S / 2, 10, want_activity="active"),
    Case("from zero to one", 0, 1, "inactive", 100, 1, want_activity="activating"),
    Case("from zero to ten", 0, 10, "inactive", 100, 10, want_activity="activating"),
    Case(
        "initial scale reached, now idle: first down to 1",
        2,
        0,
        "active",
        120,
        1,
        initial_scale=2,
    ),
    Case(
        "initial scale not reached: it overrides desired",
        0,
        1,
        "activating",
        0,
        2,
        initial_scale=2,
        initialized=False,
    ),
    Case(
        "initial scale reached for the first time",
        5,
        1,
        "activating",
        0,
        5,
        initial_scale=5,
        initialized=False,
    ),
    Case("initial scale zero", 0, 0, "inactive", 0, 0, False, initial_scale=0, initialized=False),
    Case(
        "unreachable with initial scale 2 can go down",
        2,
        0,
        "active",
        120,
        1,
        initial_scale=2,
        initialized=False,
        reachable=False,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_scaler_table(case: Case) -> None:
    config = replace(
        CONFIG,
        min_scale=case.min_scale,
        max_scale=case.max_scale,
        initial_scale=case.initial_scale,
        scale_to_zero_retention_s=case.retention_s,
        reachable=case.reachable,
    )
    state = PolicyState(
        activity=case.activity,
        activity_since=NOW - case.for_s,
        initialized=case.initialized,
        desired=case.start,
    )
    got, applied, after = scaler(config, state, case.scale_to, case.start, NOW)
    assert (got, applied) == (case.want, case.want_applied)
    if case.want_activity is not None:
        assert after.activity == case.want_activity


def test_no_metrics_does_not_scale_an_inactive_model() -> None:
    state = PolicyState(activity="inactive", activity_since=NOW, initialized=True)
    result, after = decide(CONFIG, state, Observation(None, None, 0), NOW)
    assert not result.valid
    assert result.desired == UNKNOWN_SCALE
    assert after == state


def test_no_metrics_does_not_scale_an_active_model() -> None:
    state = PolicyState(activity="active", activity_since=NOW, initialized=True, desired=12)
    result, _ = decide(CONFIG, state, Observation(None, None, 12), NOW)
    assert not result.valid


def test_no_metrics_still_brings_a_new_model_to_its_initial_scale() -> None:
    config = replace(CONFIG, initial_scale=3)
    result, after = decide(config, PolicyState(activity_since=NOW), Observation(None, None, 0), NOW)
    assert (result.valid, result.desired) == (True, 3)
    assert after.activity == "activating"


@pytest.mark.parametrize(("activation_scale", "want"), [(1, 1), (3, 3)])
def test_poke_at_zero_starts_activation_scale_without_data(activation_scale: int, want: int) -> None:
    config = replace(CONFIG, activation_scale=activation_scale)
    state = PolicyState(activity="inactive", activity_since=NOW - 1000, initialized=True)
    result, after = decide(config, state, Observation(None, None, 0, poked=True), NOW)
    assert (result.valid, result.desired) == (True, want)
    assert after.activity == "activating"


def test_poke_takes_the_larger_of_activation_scale_and_desired() -> None:
    config = replace(CONFIG, activation_scale=2, target_value=10.0)
    state = PolicyState(activity="inactive", activity_since=NOW - 1000, initialized=True)
    result, _ = decide(config, state, Observation(45.0, 45.0, 0, poked=True), NOW)
    assert result.desired == 5
