"""Load samples from the activators and the windowed averages the scaling decision reads.

Knative's bucketing (serving `pkg/autoscaler/aggregation/bucketing.go`), rewritten: values are summed
into 1-second buckets; a window's average is the bucket total over the number of buckets since the
first data point when the window is not yet full, buckets after the newest data are left out (no
report yet is not the same as zero load), and a window with nothing newer than its length averages
to 0. Several activators each see part of a model's traffic, so their samples for the same second
add up. Only the standard library is imported: the simulator runs this offline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

BUCKET_S: Final = 1.0
PRECISION_DIGITS: Final = 6  # as Knative: averages are rounded so float noise cannot flip a ceil()


@dataclass(frozen=True, slots=True)
class StatSample:
    """One activator's view of one model over its last reporting period."""

    model: str
    activator_id: str
    at: float  # seconds, the reporter's monotonic clock in-process / unix time over HTTP
    avg_concurrency: float  # time-weighted average in-flight (queued + proxied) over the period
    requests: float  # requests that arrived in the period (rps: counted per one-second bucket)
    period_s: float = 1.0
    queued: int = 0


def round_average(value: float) -> float:
    """Round half away from zero to 6 digits, the same float operations as the numpy form."""
    scale = 10.0**PRECISION_DIGITS
    return math.floor(value * scale + 0.5) / scale


def window_buckets(window_s: float) -> int:
    return max(1, math.ceil(window_s / BUCKET_S))


class BucketWindow:
    """A ring of 1-second buckets covering `window_s`; record() sums, average() reads."""

    __slots__ = ("_buckets", "_first", "_last", "_total")

    def __init__(self, window_s: float) -> None:
        self._buckets = [0.0] * window_buckets(window_s)
        self._first: int | None = None  # bucket index of the oldest data in the window
        self._last: int | None = None  # bucket index of the newest data
        self._total = 0.0

    @property
    def size(self) -> int:
        return len(self._buckets)

    def record(self, at: float, value: float) -> None:
        index = math.floor(at / BUCKET_S)
        size = len(self._buckets)
        last = self._last
        if last is not None and index != last:
            if index + size <= last:
                return  # older than the whole window: nothing left to add it to
            if index > last:
                if index - last >= size:
                    self._buckets = [0.0] * size
                    self._total = 0.0
                    self._first = index
                else:
                    for i in range(last + 1, index + 1):
                        self._total -= self._buckets[i % size]
                        self._buckets[i % size] = 0.0
                self._last = index
        if last is None:
            self._last = index
        if self._first is None or self._first > index:
            self._first = index
        self._buckets[index % size] += value
        self._total += value

    def is_empty(self, now: float) -> bool:
        return self._last is None or math.floor(now / BUCKET_S) - self._last > len(self._buckets)

    def average(self, now: float) -> float:
        """Average per bucket over the window ending at `now`."""
        if self._last is None or self._first is None:
            return 0.0
        size = len(self._buckets)
        gap = math.floor(now / BUCKET_S) - self._last
        filled = self._last - self._first + 1
        if gap <= 0:
            return round_average(self._total / min(filled, size))
        if gap >= size:
            return 0.0
        total = self._total
        # Buckets after the newest data still hold values from a window ago: take them out, and
        # average only over the buckets that data could have reached.
        for i in range(self._last + 1, self._last + gap + 1):
            total -= self._buckets[i % size]
        return round_average(total / min(filled, size - gap))


class ModelWindows:
    """Stable and panic windows of concurrency and request rate for one model."""

    __slots__ = ("_by_activator", "concurrency", "panic_concurrency", "panic_rps", "rps")

    def __init__(self, stable_window_s: float, panic_window_s: float) -> None:
        self.concurrency = BucketWindow(stable_window_s)
        self.panic_concurrency = BucketWindow(panic_window_s)
        self.rps = BucketWindow(stable_window_s)
        self.panic_rps = BucketWindow(panic_window_s)
        # activator -> (bucket, samples in it, mean concurrency, mean rps) of its newest sample
        self._by_activator: dict[str, tuple[int, int, float, float]] = {}

    def record(self, sample: StatSample) -> None:
        concurrency = sample.avg_concurrency
        # Requests are counted, not turned into a rate per sample: buckets are one second wide,
        # so a bucket's sum is that second's request rate. A rate per sample would blow up for
        # the short partial period an activator reports with a poke.
        rate = sample.requests
        bucket = math.floor(sample.at / BUCKET_S)
        previous = self._by_activator.get(sample.activator_id)
        if previous is not None and previous[0] == bucket:
            # A reporter whose timer jittered can land twice in one second: it measured the same
            # second twice, so average its samples there instead of counting its load double.
            _, count, mean_c, mean_r = previous
            # Its request counts cover disjoint periods, so they add up.
            new_c = (mean_c * count + concurrency) / (count + 1)
            self._by_activator[sample.activator_id] = (bucket, count + 1, new_c, mean_r + rate)
            concurrency = new_c - mean_c
        else:
            self._by_activator[sample.activator_id] = (bucket, 1, concurrency, rate)
        self.concurrency.record(sample.at, concurrency)
        self.panic_concurrency.record(sample.at, concurrency)
        self.rps.record(sample.at, rate)
        self.panic_rps.record(sample.at, rate)

    def observe(self, metric: str, now: float) -> tuple[float, float]:
        """(stable, panic) averages of `metric` ("concurrency" | "rps") at `now`."""
        if metric == "rps":
            return self.rps.average(now), self.panic_rps.average(now)
        return self.concurrency.average(now), self.panic_concurrency.average(now)

    def forget_activator(self, activator_id: str) -> None:
        self._by_activator.pop(activator_id, None)


class Aggregator:
    """Windows for every model, fed by samples from any number of activators."""

    def __init__(self) -> None:
        self._models: dict[str, ModelWindows] = {}

    def configure(self, model: str, stable_window_s: float, panic_window_s: float) -> None:
        """Start (or resize, dropping history) the windows of one model."""
        current = self._models.get(model)
        if current is not None and (
            current.concurrency.size == window_buckets(stable_window_s)
            and current.panic_concurrency.size == window_buckets(panic_window_s)
        ):
            return
        self._models[model] = ModelWindows(stable_window_s, panic_window_s)

    def remove(self, model: str) -> None:
        self._models.pop(model, None)

    def ingest(self, samples: Iterable[StatSample]) -> int:
        """Record samples of configured models; returns how many were used."""
        used = 0
        for sample in samples:
            windows = self._models.get(sample.model)
            if windows is None:
                continue
            windows.record(sample)
            used += 1
        return used

    def observe(self, model: str, metric: str, now: float) -> tuple[float, float] | None:
        windows = self._models.get(model)
        if windows is None:
            return None
        return windows.observe(metric, now)

    def __contains__(self, model: object) -> bool:
        return model in self._models
