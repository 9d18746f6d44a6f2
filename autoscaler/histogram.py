"""A keep-alive / pre-warm policy learned from each model's idle-time histogram.

Shahrad et al., "Serverless in the Wild" (USENIX ATC 2020), section 4.2: record every idle time (end of
one burst of activity to the start of the next) in a histogram of 1-minute bins over 4 hours. Then
after each burst

- unload at once and pre-warm again at the histogram's 5th percentile (the "pre-warm window"), so
  that the replica is back before 95 % of next arrivals;
- keep it loaded until the 99th percentile (the "keep-alive window"), after which 99 % of next
  arrivals would already have come;

each cut-off moved by a margin (head down, tail up) to absorb noise. When the histogram does not
describe the model (too few idle times, idle times spread flat over the range so the bin counts'
coefficient of variation is low, or too many beyond the range) the paper falls back to a fixed policy;
we fall back to KPA. While the model has traffic KPA decides the replica count in every case: the
histogram only decides what an idle model keeps.

Same shape as `autoscaler.policy.decide`: pure, stdlib only, time is the `now` argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from autoscaler import policy
from autoscaler.policy import Observation, PolicyConfig, PolicyState, ScaleResult


@dataclass(frozen=True, slots=True)
class HistogramConfig:
    kpa: PolicyConfig = field(default_factory=PolicyConfig)
    bin_s: float = 60.0
    range_s: float = 4 * 3600.0
    prewarm_percentile: float = 5.0
    keepalive_percentile: float = 99.0
    margin: float = 0.10  # the paper's 10 %: pre-warm 10 % earlier, keep alive 10 % longer
    min_samples: int = 10
    min_cv: float = 2.0  # the paper's representativeness cut-off on the bin counts' CV
    max_out_of_bounds_fraction: float = 0.5

    @property
    def bins(self) -> int:
        return max(1, math.ceil(self.range_s / self.bin_s))


@dataclass(frozen=True, slots=True)
class HistogramState:
    kpa: PolicyState = field(default_factory=PolicyState)
    counts: tuple[int, ...] = ()  # idle times per bin; empty until the first is recorded
    out_of_bounds: int = 0  # idle times longer than the range
    busy: bool = False  # traffic seen at the last decision
    last_busy_s: float | None = None  # when traffic was last seen

    @property
    def samples(self) -> int:
        return sum(self.counts) + self.out_of_bounds


@dataclass(frozen=True, slots=True)
class Windows:
    """What the histogram says after a burst: unload for prewarm_s, then keep one replica until
    keepalive_end_s (both measured from the end of the burst)."""

    prewarm_s: float
    keepalive_end_s: float


def record_idle(config: HistogramConfig, state: HistogramState, idle_s: float) -> HistogramState:
    counts = list(state.counts) if state.counts else [0] * config.bins
    index = int(idle_s // config.bin_s)
    if index >= config.bins:
        return replace(state, counts=tuple(counts), out_of_bounds=state.out_of_bounds + 1)
    counts[index] += 1
    return replace(state, counts=tuple(counts))


def _percentile_bin(counts: tuple[int, ...], percentile: float) -> int:
    """The bin holding the given percentile of the in-range idle times."""
    total = sum(counts)
    goal = total * percentile / 100.0
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= goal and running > 0:
            return index
    return len(counts) - 1


def representative(config: HistogramConfig, state: HistogramState) -> bool:
    if state.samples < config.min_samples:
        return False
    if state.out_of_bounds > config.max_out_of_bounds_fraction * state.samples:
        return False
    counts = state.counts
    mean = sum(counts) / len(counts)
    if mean == 0:
        return False
    variance = sum((c - mean) ** 2 for c in counts) / len(counts)
    return math.sqrt(variance) / mean >= config.min_cv


def windows(config: HistogramConfig, state: HistogramState) -> Windows | None:
    """The learned windows, or None when the histogram is not representative (fall back to KPA)."""
    if not representative(config, state):
        return None
    # Head: the lower edge of the 5th-percentile bin; tail: the upper edge of the 99th's (the paper
    # rounds outward to bin edges, then applies the margin).
    head = _percentile_bin(state.counts, config.prewarm_percentile) * config.bin_s
    tail = (_percentile_bin(state.counts, config.keepalive_percentile) + 1) * config.bin_s
    return Windows(prewarm_s=head * (1.0 - config.margin), keepalive_end_s=tail * (1.0 + config.margin))


def decide(
    config: HistogramConfig, state: HistogramState, obs: Observation, now: float
) -> tuple[ScaleResult, HistogramState]:
    """One decision: KPA while there is traffic, the learned windows while idle."""
    result, kpa_state = policy.decide(config.kpa, state.kpa, obs, now)
    busy = obs.poked or (obs.panic_value or 0.0) > 0.0
    if busy and not state.busy and state.last_busy_s is not None:
        # A burst starts after an idle stretch: that stretch is one idle time.
        state = record_idle(config, state, now - state.last_busy_s)
    state = replace(state, kpa=kpa_state, busy=busy, last_busy_s=now if busy else state.last_busy_s)
    learned = windows(config, state)
    if learned is None or busy or state.last_busy_s is None:
        return result, state
    idle_s = now - state.last_busy_s
    if idle_s < learned.prewarm_s or idle_s >= learned.keepalive_end_s:
        desired = config.kpa.min_scale
    else:
        # Inside the keep-alive window: at least one replica, more while KPA's windows still ask.
        desired = max(1, result.desired if result.valid else 0, config.kpa.min_scale)
    if config.kpa.max_scale:
        desired = min(desired, config.kpa.max_scale)
    return ScaleResult(desired, result.excess_burst_capacity, result.panic, True), state


def next_decision_at(config: HistogramConfig, state: HistogramState, now: float) -> float | None:
    """When an idle model at zero must be looked at again (the pre-warm), or None if never.

    The live loop ticks every model anyway; the simulator uses this to skip models at rest.
    """
    learned = windows(config, state)
    if learned is None or state.last_busy_s is None or state.busy:
        return None
    wake = state.last_busy_s + learned.prewarm_s
    if now < wake and learned.prewarm_s > 0:
        return wake
    return None
