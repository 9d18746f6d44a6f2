"""The scaling decision with Knative KPA semantics, as a pure function of (config, state, observation, now).

Two Knative pieces are folded into one `decide` call, in the order Knative runs them:

1. the *decider* (knative serving `pkg/autoscaler/scaling/autoscaler.go`): desired pods from the stable
   and panic window averages, rate limits relative to ready pods, panic mode, activation scale, the
   scale-down delay (a sliding maximum) and the excess burst capacity;
2. the *scaler* (`pkg/reconciler/autoscaling/kpa/scaler.go` + the PA's Active condition): min/max and
   initial scale bounds, then scale to zero only once the model was idle for a stable window and then
   inactive for the grace period (and the pod retention period).

Nothing here reads a clock or a global: time is the `now` argument and all memory is `PolicyState`.
Only the standard library is imported, so the simulator can run exactly this code offline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final, Literal

TARGET_MIN: Final = 0.01  # Knative's autoscaling.TargetMin: a target below this is meaningless
UNKNOWN_SCALE: Final = -1  # Knative's scaleUnknown: no decision could be made

# The PodAutoscaler's Active condition: Unknown while replicas start, True, False once idle.
Activity = Literal["activating", "active", "inactive"]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Knative's DeciderSpec plus the scaler's bounds; defaults are Knative's."""

    target_value: float = 70.0  # metric per replica we aim for: target x utilization
    total_value: float = 100.0  # metric one replica can take: used for burst capacity only
    metric: str = "concurrency"  # "concurrency" | "rps": which window values the caller passes
    panic_threshold_percent: float = 200.0
    stable_window_s: float = 60.0
    panic_window_percent: float = 10.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    tick_s: float = 2.0  # granularity of the scale-down delay window, as Knative's tick interval
    min_scale: int = 0
    max_scale: int = 0  # 0 = unlimited
    initial_scale: int = 1
    activation_scale: int = 1
    scale_to_zero_grace_s: float = 30.0
    scale_to_zero_retention_s: float = 0.0
    target_burst_capacity: float = 211.0  # -1 = unlimited, 0 = none
    activation_timeout_s: float = 630.0  # Knative: progress deadline 600 s + 30 s buffer
    reachable: bool = True  # Knative routes may leave a revision unreachable; ours always are

    @property
    def panic_threshold(self) -> float:
        return self.panic_threshold_percent / 100.0

    @property
    def panic_window_s(self) -> float:
        # Knative never lets the panic window drop below one 1-second bucket.
        return max(1.0, self.stable_window_s * self.panic_window_percent / 100.0)

    @property
    def delay_buckets(self) -> int:
        if self.scale_down_delay_s <= 0:
            return 0
        return math.ceil(self.scale_down_delay_s / self.tick_s)


def resolve_target(
    metric: str, target: float, container_concurrency: int, target_utilization: float
) -> tuple[float, float]:
    """(target_value, total_value) as Knative's ResolveMetricTarget, for an explicit target.

    For concurrency a hard container concurrency caps the target, so the autoscaler never aims above
    what a replica accepts.
    """
    total = target
    if metric == "concurrency" and container_concurrency > 0:
        total = min(target, float(container_concurrency))
    return max(TARGET_MIN, total * target_utilization), total


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything the decision remembers between calls."""

    activity: Activity = "activating"
    activity_since: float = 0.0
    initialized: bool = False  # the initial scale was reached once
    panic_since: float | None = None  # last time the panic threshold was crossed
    max_panic_pods: int = 0
    delay_ring: tuple[int, ...] = ()  # per delay bucket, the largest desired count recorded in it
    delay_last_index: int | None = None
    desired: int = 0  # the last replica count decided (held while waiting to scale to zero)

    @property
    def panic(self) -> bool:
        return self.panic_since is not None


@dataclass(frozen=True, slots=True)
class Observation:
    """What the caller saw: window averages of the scaling metric (None = no data) and ready replicas."""

    stable_value: float | None
    panic_value: float | None
    ready: int
    poked: bool = False  # a request is waiting at the activator for this model


@dataclass(frozen=True, slots=True)
class ScaleResult:
    desired: int  # replicas to run; UNKNOWN_SCALE when not valid
    excess_burst_capacity: int
    panic: bool
    valid: bool  # False: no data to decide on, keep whatever runs now

    @staticmethod
    def no_data(panic: bool) -> ScaleResult:
        return ScaleResult(UNKNOWN_SCALE, 0, panic, False)


def initial_state(config: PolicyConfig, ready: int, now: float) -> PolicyState:
    """State for a model first seen with `ready` replicas running.

    Like a fresh Knative decider, it starts in panic mode when more than one replica runs: the
    metric history is lost on (re)start and panic mode forbids scaling down until a stable window of
    data has accumulated.
    """
    panicking = ready > 1
    return PolicyState(
        activity="active" if ready > 0 else "activating",
        activity_since=now,
        initialized=ready >= max(config.min_scale, config.initial_scale),
        panic_since=now if panicking else None,
        max_panic_pods=ready,
        desired=ready,
    )


def decide(
    config: PolicyConfig, state: PolicyState, obs: Observation, now: float
) -> tuple[ScaleResult, PolicyState]:
    """One scaling decision. Returns the result and the state to pass to the next call."""
    if obs.stable_value is None or obs.panic_value is None:
        raw = UNKNOWN_SCALE
        panic_value = 0.0
    else:
        raw, state = decider(config, state, obs.stable_value, obs.panic_value, obs.ready, now)
        panic_value = obs.panic_value
    if obs.poked and obs.ready == 0:
        # A request waits for a model with nothing ready: start activationScale replicas now rather
        # than waiting for its load to show in the windows.
        raw = max(raw, config.activation_scale, 1)
    if raw == UNKNOWN_SCALE and state.activity != "activating":
        return ScaleResult.no_data(state.panic), state
    desired, applied, state = scaler(config, state, raw, obs.ready, now)
    if raw == UNKNOWN_SCALE and not applied:
        return ScaleResult.no_data(state.panic), state
    state = replace(state, desired=desired)
    ebc = excess_burst_capacity(config, obs.ready, panic_value)
    return ScaleResult(desired, ebc, state.panic, True), state


def excess_burst_capacity(config: PolicyConfig, ready: int, panic_value: float) -> int:
    """Spare capacity beyond the target burst capacity; negative means the activator must buffer."""
    tbc = config.target_burst_capacity
    if tbc == 0:
        return 0
    if tbc < 0:
        return -1  # unlimited burst capacity: never enough, the activator always stays in the path
    return math.floor(ready * config.total_value - tbc - panic_value)


def decider(
    config: PolicyConfig, state: PolicyState, stable: float, panic: float, ready: int, now: float
) -> tuple[int, PolicyState]:
    ready_count = float(max(1, ready))  # with nothing ready, rate limits still allow one step
    # Ceil so that a slow up-rate can still add one replica (1.1 x 2 ready -> 3, not 2).
    max_up = math.ceil(config.max_scale_up_rate * ready_count)
    max_down = math.floor(ready_count / config.max_scale_down_rate) if config.reachable else 0
    dspc = math.ceil(stable / config.target_value)
    dppc = math.ceil(panic / config.target_value)
    desired_stable = int(min(max(dspc, max_down), max_up))
    desired_panic = int(min(max(dppc, max_down), max_up))
    if config.activation_scale > 1:
        if dspc > 0 and config.activation_scale > desired_stable:
            desired_stable = config.activation_scale
        if dppc > 0 and config.activation_scale > desired_panic:
            desired_panic = config.activation_scale

    over_threshold = dppc / ready_count >= config.panic_threshold
    panic_since, max_panic_pods = state.panic_since, state.max_panic_pods
    if over_threshold:
        panic_since = now  # entering, or still surging: the stable window restarts from here
    elif panic_since is not None and panic_since + config.stable_window_s < now:
        # The surge has been in the stable window for a whole window: trust it again.
        panic_since, max_panic_pods = None, 0

    desired = desired_stable
    if panic_since is not None:
        # The stable window can lag above the panic one; provision for the larger of the two, and
        # never scale down while panicking.
        desired = max(desired, desired_panic)
        max_panic_pods = max(max_panic_pods, desired)
        desired = max_panic_pods

    ring, last_index = state.delay_ring, state.delay_last_index
    size = config.delay_buckets
    if config.reachable and size > 0:
        ring, last_index = _record_delay(ring, last_index, size, int(now // config.tick_s), desired)
        desired = max(ring)
    state = replace(
        state,
        panic_since=panic_since,
        max_panic_pods=max_panic_pods,
        delay_ring=ring,
        delay_last_index=last_index,
    )
    return desired, state


def _record_delay(
    ring: tuple[int, ...], last_index: int | None, size: int, index: int, value: int
) -> tuple[tuple[int, ...], int]:
    """Record `value` in a max-window of `size` buckets; the window's max is then max(ring).

    Equivalent to Knative's ascending-minima window: its maximum is the largest value recorded at
    indices (index - size, index]. Values are >= 0, so cleared buckets (0) never win.
    """
    slots = list(ring) if len(ring) == size else [0] * size
    if last_index is None or index - last_index >= size:
        slots = [0] * size
    elif index > last_index:
        for i in range(last_index + 1, index + 1):
            slots[i % size] = 0
    else:
        index = last_index  # a clock that stepped back records into the newest bucket
    slot = index % size
    slots[slot] = max(slots[slot], value)
    return tuple(slots), index


def apply_bounds(min_scale: int, max_scale: int, desired: int) -> int:
    if desired < min_scale:
        return min_scale
    if max_scale != 0 and desired > max_scale:
        return max_scale
    return desired


def scaler(
    config: PolicyConfig, state: PolicyState, raw: int, ready: int, now: float
) -> tuple[int, bool, PolicyState]:
    """Bounds and scale-to-zero. Returns (replicas, applied, state); not applied = keep state.desired."""
    base_min = config.min_scale if config.reachable else 0
    min_scale = base_min
    if not state.initialized and config.reachable:
        min_scale = max(min_scale, config.initial_scale)
    desired = apply_bounds(min_scale, config.max_scale, raw)

    want, applied = desired, True
    since = now - state.activity_since
    if desired == 0:
        if state.activity == "activating":
            if since < config.activation_timeout_s:
                want, applied = UNKNOWN_SCALE, False  # replicas are still starting: wait for them
        elif state.activity == "active":
            if since >= config.stable_window_s:
                applied = False  # idle for a window: go inactive, keep replicas for the grace period
            else:
                want = 1  # keep one replica for the rest of the idle window
        else:
            retention = config.scale_to_zero_retention_s if config.reachable else 0.0
            if since < max(config.scale_to_zero_grace_s, retention):
                applied = False
    state = _update_activity(config, state, base_min, want, ready, now)
    return (want if applied else state.desired), applied, state


def _update_activity(
    config: PolicyConfig, state: PolicyState, base_min: int, want: int, ready: int, now: float
) -> PolicyState:
    """Knative's computeActiveCondition: when a model counts as activating, active or inactive."""
    initialized = state.initialized
    min_ready = max(base_min, config.initial_scale) if not initialized else max(base_min, 1)
    if ready >= min_ready:
        initialized = True
    activity = state.activity
    if want == 0 or min_ready == 0:
        activity = "inactive"
    elif ready < min_ready:
        if want > 0 or activity != "inactive":
            activity = "activating"
    elif want > 0 or activity != "inactive":
        activity = "active"
    since = state.activity_since if activity == state.activity else now
    if activity == state.activity and initialized == state.initialized:
        return state
    return replace(state, activity=activity, activity_since=since, initialized=initialized)
