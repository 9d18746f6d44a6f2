"""Workloads: arrivals for one or many models, from real traces or synthetic processes.

A Workload is column arrays (arrival time, model index, token counts) sorted by time, which the engine
walks with a cursor instead of pushing every arrival onto its event heap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sim.traces import Trace

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Workload:
    models: tuple[str, ...]
    arrival_s: F64
    model_index: I64
    context_tokens: I64
    generated_tokens: I64

    @property
    def requests(self) -> int:
        return int(self.arrival_s.size)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if self.arrival_s.size else 0.0


def _assemble(models: tuple[str, ...], times: F64, index: I64, ctx: I64, gen: I64) -> Workload:
    order = np.argsort(times, kind="stable")
    return Workload(models, times[order], index[order], ctx[order], gen[order])


def _tokens(n: int, rng: np.random.Generator, tokens_from: Trace | None) -> tuple[I64, I64]:
    """Token counts resampled from a trace (keeps the real joint distribution), else zeros."""
    if tokens_from is None or tokens_from.requests == 0:
        zeros = np.zeros(n, dtype=np.int64)
        return zeros, zeros.copy()
    pick = rng.integers(0, tokens_from.requests, size=n)
    return tokens_from.context_tokens[pick], tokens_from.generated_tokens[pick]


def from_trace(trace: Trace, model: str = "model") -> Workload:
    """A trace as the traffic of one model."""
    n = trace.requests
    return Workload((model,), trace.arrival_s, np.zeros(n, dtype=np.int64), trace.context_tokens,
                    trace.generated_tokens)


def zipf_weights(n_models: int, exponent: float) -> F64:
    """Popularity of rank 1..n under Zipf's law, summing to 1."""
    ranks = np.arange(1, n_models + 1, dtype=np.float64)
    weights: F64 = np.power(ranks, -exponent)
    total = float(weights.sum())
    return weights / total


def model_names(n_models: int) -> tuple[str, ...]:
    width = len(str(n_models - 1))
    return tuple(f"m{i:0{width}d}" for i in range(n_models))


def split_trace(trace: Trace, n_models: int, exponent: float = 1.0, seed: int = 0,
                names: tuple[str, ...] | None = None) -> Workload:
    """One trace spread over n models by Zipf popularity: each request goes to one model at random."""
    return split(from_trace(trace), n_models, exponent, seed, names)


def split(workload: Workload, n_models: int, exponent: float = 1.0, seed: int = 0,
          names: tuple[str, ...] | None = None) -> Workload:
    """A one-model workload's requests spread over n models by Zipf popularity (rank = position in
    `names`, default m0, m1, ...). Splitting a Poisson stream at random gives Poisson streams."""
    if names is not None and len(names) != n_models:
        raise ValueError(f"{len(names)} names for {n_models} models")
    rng = np.random.default_rng(seed)
    index = rng.choice(n_models, size=workload.requests, p=zipf_weights(n_models, exponent)).astype(np.int64)
    return Workload(names or model_names(n_models), workload.arrival_s, index, workload.context_tokens,
                    workload.generated_tokens)


def poisson(rate_per_s: float, duration_s: float, seed: int = 0, model: str = "model",
            tokens_from: Trace | None = None) -> Workload:
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate_per_s * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, size=n))
    ctx, gen = _tokens(n, rng, tokens_from)
    return Workload((model,), times, np.zeros(n, dtype=np.int64), ctx, gen)


def _on_off_times(rng: np.random.Generator, mean_rate_per_s: float, duration_s: float, on_s: float,
                  off_s: float) -> F64:
    """Arrivals of an on/off source: exponential on and off periods, Poisson inside on periods at the
    rate that keeps the long-run mean at `mean_rate_per_s`."""
    cycles = int(duration_s / (on_s + off_s) * 1.5) + 4
    ons = rng.exponential(on_s, size=cycles)
    offs = rng.exponential(off_s, size=cycles)
    # A random phase, so that models do not all start their first burst at t=0.
    starts = np.cumsum(np.concatenate(([0.0], (ons + offs)[:-1]))) - rng.uniform(0, on_s + off_s)
    ends = starts + ons
    on_rate = mean_rate_per_s * (on_s + off_s) / on_s
    counts = rng.poisson(on_rate * ons)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.float64)
    owner = np.repeat(np.arange(cycles), counts)
    times = starts[owner] + rng.uniform(0.0, 1.0, size=total) * (ends - starts)[owner]
    return times[(times >= 0.0) & (times < duration_s)]


def bursty(mean_rate_per_s: float, duration_s: float, on_s: float = 60.0, off_s: float = 300.0,
           seed: int = 0, model: str = "model", tokens_from: Trace | None = None) -> Workload:
    rng = np.random.default_rng(seed)
    times = np.sort(_on_off_times(rng, mean_rate_per_s, duration_s, on_s, off_s))
    ctx, gen = _tokens(times.size, rng, tokens_from)
    return Workload((model,), times, np.zeros(times.size, dtype=np.int64), ctx, gen)


def diurnal(mean_rate_per_s: float, duration_s: float, amplitude: float = 0.8, period_s: float = 86400.0,
            seed: int = 0, model: str = "model", tokens_from: Trace | None = None) -> Workload:
    """Poisson with rate mean * (1 + amplitude * sin(2 pi t / period)), drawn by thinning."""
    rng = np.random.default_rng(seed)
    peak = mean_rate_per_s * (1.0 + abs(amplitude))
    n = int(rng.poisson(peak * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, size=n))
    rate = mean_rate_per_s * (1.0 + amplitude * np.sin(2.0 * np.pi * times / period_s))
    times = times[rng.uniform(0.0, peak, size=n) < rate]
    ctx, gen = _tokens(times.size, rng, tokens_from)
    return Workload((model,), times, np.zeros(times.size, dtype=np.int64), ctx, gen)


def many_models(n_models: int, total_rate_per_s: float, duration_s: float, exponent: float = 1.0,
                on_s: float = 120.0, off_s: float = 900.0, seed: int = 0,
                tokens_from: Trace | None = None, names: tuple[str, ...] | None = None) -> Workload:
    """N models with Zipf popularity, each an independent bursty on/off source."""
    rng = np.random.default_rng(seed)
    weights = zipf_weights(n_models, exponent)
    parts: list[F64] = []
    owners: list[I64] = []
    for m in range(n_models):
        times = _on_off_times(rng, total_rate_per_s * weights[m], duration_s, on_s, off_s)
        parts.append(times)
        owners.append(np.full(times.size, m, dtype=np.int64))
    times_all = np.concatenate(parts) if parts else np.zeros(0)
    index = np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64)
    ctx, gen = _tokens(times_all.size, rng, tokens_from)
    return _assemble(names or model_names(n_models), times_all, index, ctx, gen)
