"""`autoscaler.aggregation`'s bucketed windows over many models at once, on numpy arrays.

Row i is one model, as in `autoscaler.batch`; `BatchWindows` gives, for every row, the stable and
panic window averages that `aggregation.Aggregator` would (tests/autoscaler check equality), from
the per-activator samples the activators report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from autoscaler.aggregation import BUCKET_S, PRECISION_DIGITS, StatSample, window_buckets
from autoscaler.batch import NO_INDEX, BoolArray, FloatArray, IntArray


def round_averages(values: FloatArray) -> FloatArray:
    """aggregation.round_average, elementwise, with the same float operations."""
    scale = 10.0**PRECISION_DIGITS
    result: FloatArray = np.floor(values * scale + 0.5) / scale
    return result


class _Rings:
    """aggregation.BucketWindow for every row: ring of 1-second buckets, first/last data index, total."""

    def __init__(self, sizes: IntArray, width: int) -> None:
        n = len(sizes)
        self.size = sizes.astype(np.int64)
        self.buckets = np.zeros((n, max(1, width)), dtype=np.float64)
        self.first = np.full(n, NO_INDEX, dtype=np.int64)
        self.last = np.full(n, NO_INDEX, dtype=np.int64)
        self.total = np.zeros(n, dtype=np.float64)

    def reset_row(self, i: int, size: int) -> None:
        if size > self.buckets.shape[1]:
            wider = np.zeros((self.buckets.shape[0], size), dtype=np.float64)
            wider[:, : self.buckets.shape[1]] = self.buckets
            self.buckets = wider
        self.size[i] = size
        self.buckets[i] = 0.0
        self.first[i] = self.last[i] = NO_INDEX
        self.total[i] = 0.0

    def grown(self, capacity: int) -> _Rings:
        n = len(self.size)
        out = _Rings(np.ones(capacity, dtype=np.int64), self.buckets.shape[1])
        out.size[:n], out.buckets[:n], out.total[:n] = self.size, self.buckets, self.total
        out.first[:n], out.last[:n] = self.first, self.last
        return out

    def record(self, rows: IntArray, index: IntArray, value: FloatArray) -> None:
        """Record one value per row (rows unique) into bucket `index`."""
        size, last = self.size[rows], self.last[rows]
        has = last != NO_INDEX
        keep = ~(has & (index != last) & (index + size <= last))  # older than the window: dropped
        rows, index, value, size, last, has = (
            rows[keep],
            index[keep],
            value[keep],
            size[keep],
            last[keep],
            has[keep],
        )
        advance = has & (index > last)
        reset = advance & (index - last >= size)
        clear = advance & ~reset
        if clear.any():
            # Bucket by bucket, oldest first, the float subtractions BucketWindow.record does.
            c_rows, c_last, c_size = rows[clear], last[clear], size[clear]
            steps = (index - last)[clear]
            for k in range(int(steps.max())):
                m = k < steps
                r, slot = c_rows[m], (c_last[m] + 1 + k) % c_size[m]
                self.total[r] -= self.buckets[r, slot]
                self.buckets[r, slot] = 0.0
        if reset.any():
            r = rows[reset]
            self.buckets[r] = 0.0
            self.total[r] = 0.0
            self.first[r] = index[reset]
        self.last[rows] = np.where(advance | ~has, index, last)
        first = self.first[rows]
        self.first[rows] = np.where((first == NO_INDEX) | (first > index), index, first)
        slot = index % size
        self.buckets[rows, slot] += value
        self.total[rows] += value

    def average(self, now: float, rows: IntArray | None = None) -> FloatArray:
        """BucketWindow.average for every row, or for `rows` only (in that order)."""
        if rows is None:
            rows = np.arange(len(self.size), dtype=np.int64)
        size, last, first, total_all = self.size[rows], self.last[rows], self.first[rows], self.total[rows]
        out = np.zeros(len(rows), dtype=np.float64)
        has = last != NO_INDEX
        gap = np.where(has, np.int64(np.floor(now / BUCKET_S)) - last, 0)
        filled = np.where(has, last - first + 1, 1)
        current = np.flatnonzero(has & (gap <= 0))
        out[current] = round_averages(total_all[current] / np.minimum(filled[current], size[current]))
        lagging = np.flatnonzero(has & (gap > 0) & (gap < size))
        if len(lagging):
            total = total_all[lagging]
            g, lag_last, lag_size, lag_rows = gap[lagging], last[lagging], size[lagging], rows[lagging]
            for k in range(int(g.max())):
                m = k < g
                total[m] -= self.buckets[lag_rows[m], (lag_last[m] + 1 + k) % lag_size[m]]
            out[lagging] = round_averages(total / np.minimum(filled[lagging], lag_size - g))
        return out


class _ActivatorMeans:
    """Per row, one activator's newest bucket and its running means there (ModelWindows' dedupe)."""

    def __init__(self, n: int) -> None:
        self.bucket = np.full(n, NO_INDEX, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.mean_c = np.zeros(n, dtype=np.float64)
        self.mean_r = np.zeros(n, dtype=np.float64)

    def grown(self, capacity: int) -> _ActivatorMeans:
        n = len(self.bucket)
        out = _ActivatorMeans(capacity)
        out.bucket[:n], out.count[:n], out.mean_c[:n], out.mean_r[:n] = (
            self.bucket,
            self.count,
            self.mean_c,
            self.mean_r,
        )
        return out


class BatchWindows:
    """aggregation.ModelWindows for every row: stable and panic windows of concurrency and rps."""

    def __init__(self, stable_window_s: Sequence[float], panic_window_s: Sequence[float]) -> None:
        stable = np.array([window_buckets(w) for w in stable_window_s], dtype=np.int64)
        panic = np.array([window_buckets(w) for w in panic_window_s], dtype=np.int64)
        width_s = int(stable.max()) if len(stable) else 1
        width_p = int(panic.max()) if len(panic) else 1
        self.concurrency = _Rings(stable, width_s)
        self.panic_concurrency = _Rings(panic, width_p)
        self.rps = _Rings(stable, width_s)
        self.panic_rps = _Rings(panic, width_p)
        self._activators: dict[str, _ActivatorMeans] = {}

    @property
    def capacity(self) -> int:
        return len(self.concurrency.size)

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        self.concurrency = self.concurrency.grown(capacity)
        self.panic_concurrency = self.panic_concurrency.grown(capacity)
        self.rps = self.rps.grown(capacity)
        self.panic_rps = self.panic_rps.grown(capacity)
        self._activators = {k: v.grown(capacity) for k, v in self._activators.items()}

    def configure(self, row: int, stable_window_s: float, panic_window_s: float) -> None:
        """Give `row` fresh, empty windows (a new model, or new window lengths)."""
        stable, panic = window_buckets(stable_window_s), window_buckets(panic_window_s)
        self.concurrency.reset_row(row, stable)
        self.rps.reset_row(row, stable)
        self.panic_concurrency.reset_row(row, panic)
        self.panic_rps.reset_row(row, panic)
        for means in self._activators.values():
            means.bucket[row] = NO_INDEX

    def ingest(self, samples: Sequence[StatSample], row_of: Mapping[str, int]) -> int:
        """Record samples of known models (row_of) in order; returns how many were used."""
        found = [(row_of.get(s.model), s) for s in samples]
        known = [(row, s) for row, s in found if row is not None]
        if len({row for row, _ in known}) == len(known):
            if known:
                self._record_round(known)  # the usual report: each model once
            return len(known)
        # A model twice in one call goes to a later round, so each round has unique rows and every
        # model still sees its samples in arrival order.
        rounds: list[list[tuple[int, StatSample]]] = []
        seen: dict[int, int] = {}
        for row, sample in known:
            n = seen.get(row, 0)
            seen[row] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append((row, sample))
        for batch in rounds:
            self._record_round(batch)
        return len(known)

    def _record_round(self, batch: list[tuple[int, StatSample]]) -> None:
        rows = np.array([r for r, _ in batch], dtype=np.int64)
        at = np.array([s.at for _, s in batch], dtype=np.float64)
        conc = np.array([s.avg_concurrency for _, s in batch], dtype=np.float64)
        # Request counts, summed per one-second bucket (see aggregation.ModelWindows.record).
        rate = np.array([s.requests for _, s in batch], dtype=np.float64)
        index = np.floor(at / BUCKET_S).astype(np.int64)
        activators = [s.activator_id for _, s in batch]
        groups: dict[str, list[int]] = {}
        if len(set(activators)) == 1:
            groups[activators[0]] = list(range(len(batch)))
        else:
            for j, activator in enumerate(activators):
                groups.setdefault(activator, []).append(j)
        for activator, ks in groups.items():
            means = self._activators.get(activator)
            if means is None:
                means = self._activators[activator] = _ActivatorMeans(self.capacity)
            k = np.array(ks, dtype=np.int64)
            r = rows[k]
            same = means.bucket[r] == index[k]
            count, mean_c, mean_r = means.count[r], means.mean_c[r], means.mean_r[r]
            new_c = np.where(same, (mean_c * count + conc[k]) / (count + 1), conc[k])
            new_r = np.where(same, mean_r + rate[k], rate[k])
            conc[k] = np.where(same, new_c - mean_c, conc[k])
            means.bucket[r], means.count[r] = index[k], np.where(same, count + 1, 1)
            means.mean_c[r], means.mean_r[r] = new_c, new_r
        self.concurrency.record(rows, index, conc)
        self.panic_concurrency.record(rows, index, conc)
        self.rps.record(rows, index, rate)
        self.panic_rps.record(rows, index, rate)

    def observe(
        self, use_rps: BoolArray, now: float, rows: IntArray | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """(stable, panic) averages of each row's metric at `now`; use_rps is per row of `rows`."""
        stable = self.concurrency.average(now, rows)
        panic = self.panic_concurrency.average(now, rows)
        if use_rps.any():
            stable = np.where(use_rps, self.rps.average(now, rows), stable)
            panic = np.where(use_rps, self.panic_rps.average(now, rows), panic)
        return stable, panic
