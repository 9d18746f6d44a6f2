"""What a replica costs: the cold-start model (schedule, fetch, load) and the service-time model.

Both are plain frozen dataclasses with unit-bearing fields; randomness comes from a numpy Generator
handed in by the engine, so a run is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ColdStartModel:
    """Time from a scale-up decision to a ready replica.

    schedule_s: pod/process scheduling and container start; fetch: artifact bytes over the network on a
    node-cache miss (a hit costs `cache_hit_fetch_s`, a hard link or page-cache read); load_s: the model
    server loading weights and passing readiness. `jitter_fraction` spreads each phase uniformly by
    +/- that fraction, because real cold starts are never identical.
    """

    schedule_s: float = 0.0
    artifact_bytes: float = 0.0
    fetch_bytes_per_s: float = 1e9
    cache_hit_ratio: float = 1.0
    cache_hit_fetch_s: float = 0.0
    load_s: float = 5.0
    jitter_fraction: float = 0.0

    def fetch_miss_s(self) -> float:
        return self.artifact_bytes / self.fetch_bytes_per_s if self.fetch_bytes_per_s > 0 else 0.0

    def mean_s(self) -> float:
        """Expected cold start, for reports and hand checks."""
        hit = self.cache_hit_ratio
        fetch = hit * self.cache_hit_fetch_s + (1.0 - hit) * self.fetch_miss_s()
        return self.schedule_s + fetch + self.load_s

    def sample_s(self, rng: np.random.Generator) -> tuple[float, bool]:
        """One cold start: (seconds, cache hit)."""
        hit = self.cache_hit_ratio >= 1.0 or bool(rng.random() < self.cache_hit_ratio)
        fetch = self.cache_hit_fetch_s if hit else self.fetch_miss_s()
        phases = self.schedule_s + fetch + self.load_s
        if self.jitter_fraction > 0.0:
            phases *= 1.0 + self.jitter_fraction * (2.0 * rng.random() - 1.0)
        return max(0.0, phases), hit


@dataclass(frozen=True)
class ServiceTimeModel:
    """Time one request holds a replica slot once dispatched.

    With no token rates set it is `fixed_s`. With rates, an LLM request costs
    fixed_s + context_tokens / prefill_tokens_per_s + generated_tokens / decode_tokens_per_s
    (the prefill/decode split the Azure traces' token counts are published for). Per-replica
    concurrency is bounded by containerConcurrency; within it requests do not slow each other,
    which is how continuous-batching servers behave far from saturation.
    """

    fixed_s: float = 0.1
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0

    @property
    def uses_tokens(self) -> bool:
        return self.prefill_tokens_per_s > 0.0 or self.decode_tokens_per_s > 0.0

    def service_s(
        self, context_tokens: npt.NDArray[np.int64], generated_tokens: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Service times for a batch of requests (vectorised: the engine computes them once)."""
        out = np.full(context_tokens.shape, self.fixed_s, dtype=np.float64)
        if self.prefill_tokens_per_s > 0.0:
            out += context_tokens / self.prefill_tokens_per_s
        if self.decode_tokens_per_s > 0.0:
            out += generated_tokens / self.decode_tokens_per_s
        return out
