"""Per-model scaling policies other than the batched KPA, behind one small hook.

A model whose spec names a policy other than "kpa" gets its own policy object from `POLICIES`; the
loop asks it for a decision once a tick (and on a poke) instead of deciding it in the numpy batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from autoscaler.policy import Observation, PolicyConfig, ScaleResult, initial_state

if TYPE_CHECKING:
    from zeroserve.spec import ModelService

log = logging.getLogger(__name__)


class ModelPolicy(Protocol):
    """A per-model policy other than the batched KPA; holds its own state."""

    def decide(self, obs: Observation, now: float) -> ScaleResult: ...


PolicyFactory = Callable[[PolicyConfig, int, float], ModelPolicy]  # (kpa config, ready, now)


class HistogramPolicy:
    """`autoscaler.histogram.decide` (same signature as policy.decide) behind the ModelPolicy hook."""

    def __init__(self, config: PolicyConfig, ready: int, now: float) -> None:
        from autoscaler import histogram  # imported only when a model asks for it

        self._decide = histogram.decide
        self.config = histogram.HistogramConfig(kpa=config)
        self.state = histogram.HistogramState(kpa=initial_state(config, ready, now))

    def decide(self, obs: Observation, now: float) -> ScaleResult:
        result, self.state = self._decide(self.config, self.state, obs, now)
        return result


POLICIES: dict[str, PolicyFactory] = {"histogram": HistogramPolicy}


def new_policy(svc: ModelService, config: PolicyConfig, ready: int, now: float) -> ModelPolicy | None:
    """The model's own policy object; None for KPA (decided in the batch) or an unknown name."""
    name = svc.scaling.policy
    if name == "kpa":
        return None
    factory = POLICIES.get(name)
    if factory is None:
        log.warning("unknown scaling policy %r for model=%s, using kpa", name, svc.name)
        return None
    return factory(config, ready, now)
