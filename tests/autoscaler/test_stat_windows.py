"""Window averages: Knative's bucketing cases (aggregation/bucketing_test.go) plus activator merging."""

from __future__ import annotations

import pytest

from autoscaler.aggregation import Aggregator, BucketWindow, ModelWindows, StatSample

T0 = 5_000.3  # not on a bucket boundary, like Knative's time.Now()


def test_window_average_follows_knative_bucketing() -> None:
    w = BucketWindow(5.0)
    w.record(T0, 1)
    assert w.average(T0) == 1.0  # one bucket of data: not diluted by the empty rest of the window
    for i in range(1, 5):
        w.record(T0 + i, i + 1)
    assert w.average(T0 + 4) == 15 / 5
    assert w.average(T0 + 3.6) == 15 / 5  # `now` lagging behind the data
    assert w.average(T0 + 6) == (15 - 1 - 2) / (5 - 2)  # a short hole is left out, not zero
    assert w.average(T0 + 10) == 0.0  # nothing for a whole window
    w.record(T0 + 6, 91)
    assert w.average(T0 + 6) == (15 - 1 - 2 + 91) / 5

    now = T0 + 60
    w.record(now, 1984)
    assert w.average(now) == 1984.0  # a jump past the window starts over
    w.record(now - 3, 4)
    assert w.average(now) == (4 + 1984) / 4  # late data moves the start back
    now += 1
    w.record(now, 5)
    assert w.average(now) == (4 + 1984 + 5) / 5
    w.record(now - 3, 10)
    assert w.average(now) == (4 + 10 + 1984 + 5) / 5
    w.record(now - 6, 10)  # older than the window: ignored
    w.record(now - 5, 10)  # exactly a window old: ignored
    assert w.average(now) == (4 + 10 + 1984 + 5) / 5
    w.record(now + 5, 10)  # exactly a window without data clears the old buckets
    assert w.average(now + 5) == 10.0


def test_same_bucket_values_add_up() -> None:
    w = BucketWindow(120.0)
    base = 7_000.0
    for value, at in ((1.0, base), (10.0, base + 0.1), (1.0, base + 1), (1.0, base + 3)):
        w.record(at, value)
    assert w.average(base + 3) == pytest.approx((11 + 1 + 0 + 1) / 4)


def test_empty_window() -> None:
    w = BucketWindow(60.0)
    assert w.is_empty(T0)
    assert w.average(T0) == 0.0
    w.record(T0, 3)
    assert not w.is_empty(T0 + 59)
    assert w.is_empty(T0 + 61.5)


def test_averages_are_rounded_to_six_digits() -> None:
    w = BucketWindow(3.0)
    for i in range(3):
        w.record(T0 + i, 0.1)
    assert w.average(T0 + 2) == 0.1  # 0.30000000000000004 / 3 would be 0.10000000000000002


def sample(activator: str, at: float, concurrency: float, requests: float = 0.0) -> StatSample:
    return StatSample("m", activator, at, concurrency, requests)


def test_activators_sum_per_second() -> None:
    windows = ModelWindows(60.0, 6.0)
    for second in range(6):
        windows.record(sample("a", T0 + second, 3.0, 30))
        windows.record(sample("b", T0 + second + 0.5, 2.0, 20))
    assert windows.observe("concurrency", T0 + 5.9) == (5.0, 5.0)
    assert windows.observe("rps", T0 + 5.9) == (50.0, 50.0)


def test_one_activator_twice_in_a_second_averages_concurrency_and_adds_requests() -> None:
    windows = ModelWindows(60.0, 6.0)
    windows.record(sample("a", 100.05, 4.0, 10))
    windows.record(sample("a", 100.95, 6.0, 30))  # the reporter's timer jittered into the same second
    windows.record(sample("b", 100.5, 1.0, 5))
    assert windows.observe("concurrency", 100.99) == (6.0, 6.0)
    # Request counts of disjoint periods add up; the empty bucket next to this one evens it out.
    assert windows.observe("rps", 100.99) == (45.0, 45.0)


def test_rps_counts_requests_per_second_bucket() -> None:
    windows = ModelWindows(60.0, 6.0)
    windows.record(StatSample("m", "a", 50.0, 1.0, 20.0, period_s=2.0))
    windows.record(StatSample("m", "a", 52.0, 1.0, 20.0, period_s=2.0))
    stable, panic = windows.observe("rps", 52.5)
    assert stable == pytest.approx(40.0 / 3, abs=1e-5) and panic == stable


def test_a_poke_report_of_a_tiny_period_does_not_explode_the_rate() -> None:
    # An activator reports with each poke, for the microseconds since its last report.
    windows = ModelWindows(60.0, 6.0)
    windows.record(StatSample("m", "a", 10.0, 1.0, 1.0, period_s=1e-6))
    windows.record(StatSample("m", "a", 10.9, 1.0, 2.0, period_s=0.9))
    assert windows.observe("rps", 10.95) == (3.0, 3.0)


def test_panic_window_forgets_faster_than_stable() -> None:
    windows = ModelWindows(60.0, 6.0)
    for second in range(60):
        windows.record(sample("a", 1_000 + second, 10.0 if second < 30 else 0.0))
    stable, panic = windows.observe("concurrency", 1_059)
    assert stable == 5.0
    assert panic == 0.0


def test_aggregator_ignores_unknown_models_and_resizes() -> None:
    agg = Aggregator()
    agg.configure("m", 60.0, 6.0)
    assert agg.ingest([sample("a", 10.0, 2.0), StatSample("other", "a", 10.0, 9.0, 1.0)]) == 1
    assert agg.observe("m", "concurrency", 10.0) == (2.0, 2.0)
    assert agg.observe("other", "concurrency", 10.0) is None
    agg.configure("m", 60.0, 6.0)  # same windows: history kept
    assert agg.observe("m", "concurrency", 10.0) == (2.0, 2.0)
    agg.configure("m", 30.0, 3.0)  # new windows: start over
    assert agg.observe("m", "concurrency", 10.0) == (0.0, 0.0)
    agg.remove("m")
    assert "m" not in agg
