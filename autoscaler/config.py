"""The one translation of a ModelService's `scaling:` section into the policy's configuration.

Shared by the live loop and the simulator (which may not import the loop), so the two can never
read the same spec differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoscaler.policy import PolicyConfig, resolve_target

if TYPE_CHECKING:
    from zeroserve.spec import ScalingSpec


def policy_config_from_spec(scaling: ScalingSpec) -> PolicyConfig:
    """The KPA configuration a model's `scaling:` section means."""
    target_value, total_value = resolve_target(
        scaling.metric, scaling.target, scaling.container_concurrency, scaling.target_utilization
    )
    return PolicyConfig(
        target_value=target_value,
        total_value=total_value,
        metric=scaling.metric,
        panic_threshold_percent=scaling.panic_threshold_percent,
        stable_window_s=scaling.stable_window_s,
        panic_window_percent=scaling.panic_window_percent,
        max_scale_up_rate=scaling.max_scale_up_rate,
        max_scale_down_rate=scaling.max_scale_down_rate,
        scale_down_delay_s=scaling.scale_down_delay_s,
        tick_s=scaling.tick_s,
        min_scale=scaling.min_replicas,
        max_scale=scaling.max_replicas,
        initial_scale=scaling.initial_scale,
        activation_scale=scaling.activation_scale,
        scale_to_zero_grace_s=scaling.scale_to_zero_grace_s,
        scale_to_zero_retention_s=scaling.scale_to_zero_retention_s,
        target_burst_capacity=scaling.target_burst_capacity,
    )
