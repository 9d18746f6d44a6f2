"""autoscaler.batch decides exactly as autoscaler.policy, row by row, on random fleets and histories."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from autoscaler.aggregation import ModelWindows, StatSample
from autoscaler.batch import BatchConfig, BatchState, decide_batch
from autoscaler.batch_windows import BatchWindows
from autoscaler.policy import Observation, PolicyConfig, PolicyState, decide, initial_state

configs = st.builds(
    PolicyConfig,
    target_value=st.sampled_from([0.01, 0.7, 1.0, 7.0, 70.0, 140.0]),
    total_value=st.sampled_from([1.0, 10.0, 100.0]),
    panic_threshold_percent=st.sampled_from([110.0, 200.0, 1000.0]),
    stable_window_s=st.sampled_from([6.0, 20.0, 60.0]),
    max_scale_up_rate=st.sampled_from([1.1, 2.0, 1000.0]),
    max_scale_down_rate=st.sampled_from([1.1, 2.0, 10.0]),
    scale_down_delay_s=st.sampled_from([0.0, 0.0, 2.0, 5.0, 12.0]),
    tick_s=st.sampled_from([1.0, 2.0]),
    min_scale=st.integers(0, 3),
    max_scale=st.sampled_from([0, 0, 2, 8]),
    initial_scale=st.integers(0, 3),
    activation_scale=st.integers(1, 4),
    scale_to_zero_grace_s=st.sampled_from([0.0, 4.0, 30.0]),
    scale_to_zero_retention_s=st.sampled_from([0.0, 10.0]),
    target_burst_capacity=st.sampled_from([-1.0, 0.0, 10.0, 211.0]),
    activation_timeout_s=st.sampled_from([5.0, 630.0]),
    reachable=st.booleans(),
)

values = st.one_of(st.none(), st.floats(0.0, 500.0), st.sampled_from([0.0, 1.0, 70.0, 140.0]))
observations = st.tuples(values, values, st.integers(0, 20), st.booleans())
steps = st.tuples(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.0, 31.0]), st.lists(observations))


@settings(max_examples=150, deadline=None)
@given(
    fleet=st.lists(st.tuples(configs, st.integers(0, 6)), min_size=1, max_size=6),
    history=st.lists(steps, min_size=1, max_size=25),
)
def test_batch_equals_scalar(
    fleet: list[tuple[PolicyConfig, int]],
    history: list[tuple[float, list[tuple[float | None, float | None, int, bool]]]],
) -> None:
    now = 1_000.0
    cfgs = [c for c, _ in fleet]
    states: list[PolicyState] = [initial_state(c, ready, now) for c, ready in fleet]
    batch_config = BatchConfig.from_configs(cfgs)
    batch_state = BatchState.from_states(states, batch_config)
    n = len(fleet)
    for dt, obs_list in history:
        now += dt
        obs = [obs_list[i] if i < len(obs_list) else (0.0, 0.0, 1, False) for i in range(n)]
        stable = np.array([np.nan if o[0] is None else o[0] for o in obs])
        panic = np.array([np.nan if o[1] is None else o[1] for o in obs])
        ready = np.array([o[2] for o in obs], dtype=np.int64)
        poked = np.array([o[3] for o in obs], dtype=np.bool_)
        got = decide_batch(batch_config, batch_state, stable, panic, ready, poked, now)
        for i, (s_value, p_value, r, pk) in enumerate(obs):
            want, states[i] = decide(cfgs[i], states[i], Observation(s_value, p_value, r, pk), now)
            assert got.row(i) == want, (i, now)
            assert batch_state.get(i, cfgs[i].delay_buckets) == states[i], (i, now)


def test_config_rows_can_be_patched_in_place() -> None:
    a, b = (
        PolicyConfig(),
        PolicyConfig(target_value=3.0, min_scale=2, reachable=False, scale_down_delay_s=9.0),
    )
    patched = BatchConfig.from_configs([a, a])
    patched.set(1, b)
    fresh = BatchConfig.from_configs([a, b])
    for name in BatchConfig.__dataclass_fields__:
        assert list(getattr(patched, name)) == list(getattr(fresh, name)), name


def test_state_round_trips_through_the_batch_form() -> None:
    config = PolicyConfig(scale_down_delay_s=6.0)
    state = PolicyState(
        activity="inactive",
        activity_since=5.0,
        initialized=True,
        panic_since=3.0,
        max_panic_pods=4,
        delay_ring=(1, 0, 7),
        delay_last_index=11,
        desired=2,
    )
    batch = BatchState.from_states([PolicyState(), state], BatchConfig.from_configs([config, config]))
    assert batch.get(1, config.delay_buckets) == state
    assert batch.get(0, config.delay_buckets) == PolicyState()


window_lengths = st.sampled_from([(60.0, 6.0), (6.0, 1.0), (20.0, 2.0), (10.0, 0.5)])
sample_events = st.tuples(
    st.integers(0, 3),  # model
    st.sampled_from(["a", "b", "c"]),  # activator
    st.sampled_from([-70.0, -3.0, -0.4, 0.0, 0.3, 0.6, 1.0, 1.0, 1.0, 2.5, 9.0, 65.0]),  # time step
    st.floats(0.0, 300.0),
    st.floats(0.0, 50.0),
    st.sampled_from([1.0, 1.0, 0.5, 2.0]),
)


@settings(max_examples=150, deadline=None)
@given(
    windows=st.lists(window_lengths, min_size=4, max_size=4),
    calls=st.lists(st.lists(sample_events, max_size=6), min_size=1, max_size=30),
    read_offsets=st.lists(st.sampled_from([0.0, 0.2, 1.0, 3.0, 7.0, 61.0]), min_size=1, max_size=3),
)
def test_batch_windows_equal_model_windows(
    windows: list[tuple[float, float]],
    calls: list[list[tuple[int, str, float, float, float, float]]],
    read_offsets: list[float],
) -> None:
    scalar = [ModelWindows(s, p) for s, p in windows]
    batch = BatchWindows([s for s, _ in windows], [p for _, p in windows])
    row_of = {f"m{i}": i for i in range(4)}
    use_rps = np.array([False, True, False, True])
    now = 10_000.0
    for call in calls:
        samples = []
        for model, activator, step, conc, requests, period in call:
            now += step
            samples.append(StatSample(f"m{model}", activator, now, conc, requests, period))
        for sample in samples:
            scalar[row_of[sample.model]].record(sample)
        batch.ingest(samples, row_of)
        for offset in read_offsets:
            stable, panic = batch.observe(use_rps, now + offset)
            for i in range(4):
                want = scalar[i].observe("rps" if use_rps[i] else "concurrency", now + offset)
                assert (float(stable[i]), float(panic[i])) == want, (i, now + offset)
            some = np.array([3, 0], dtype=np.int64)  # the poke path reads single rows
            part = batch.observe(use_rps[some], now + offset, some)
            assert [list(part[0]), list(part[1])] == [list(stable[some]), list(panic[some])]


def test_batch_windows_grow_and_reconfigure() -> None:
    batch = BatchWindows([60.0], [6.0])
    batch.ingest([StatSample("m0", "a", 100.0, 4.0, 4.0)], {"m0": 0})
    batch.grow(3)
    batch.configure(2, 120.0, 12.0)  # wider than any row before
    batch.ingest([StatSample("m2", "a", 100.0, 8.0, 8.0)], {"m0": 0, "m2": 2})
    stable, panic = batch.observe(np.zeros(3, dtype=np.bool_), 100.0)
    assert list(stable) == [4.0, 0.0, 8.0]
    assert list(panic) == [4.0, 0.0, 8.0]
    batch.configure(0, 60.0, 6.0)
    stable, _ = batch.observe(np.zeros(3, dtype=np.bool_), 100.0)
    assert list(stable) == [0.0, 0.0, 8.0]
