"""Lease leader election against the emulator's Lease, on a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from k8s_harness import NS, Harness

from autoscaler.backends.k8s_lease import KubernetesLeaseStore
from autoscaler.backends.kubernetes_api import KubeApi, configuration
from autoscaler.leader import ElectionConfig, LeaderElector


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def apis(k8s: Harness) -> AsyncIterator[list[KubeApi]]:
    made = [KubeApi(configuration(k8s.emu.url, token=f"autoscaler-{n}")) for n in ("a", "b")]
    yield made
    for api in made:
        await api.close()


def electors(apis: list[KubeApi], clock: Clock) -> tuple[LeaderElector, LeaderElector]:
    def make(api: KubeApi, name: str) -> LeaderElector:
        cfg = ElectionConfig(identity=name, address=f"http://{name}:8081", lease_duration_s=15,
                             renew_deadline_s=10, retry_period_s=2)
        return LeaderElector(KubernetesLeaseStore(api, NS, "zeroserve-autoscaler"), cfg,
                             monotonic=clock, wall=clock)

    return make(apis[0], "a"), make(apis[1], "b")


async def test_one_leader_and_takeover_within_the_lease_duration(apis: list[KubeApi]) -> None:
    clock = Clock()
    a, b = electors(apis, clock)
    assert await a.step()
    assert not await b.step()
    assert b.leader_address == "http://a:8081"
    for _ in range(5):  # a renews; b keeps seeing a fresh lease
        clock.t += 2
        assert await a.step()
        assert not await b.step()
    stopped_at = clock.t  # a stops renewing (crashed, partitioned)
    while not await b.step():
        clock.t += 2
        assert not (a.is_leader() and b.is_leader())
        assert clock.t - stopped_at <= 15 + 2, "b must take over within the lease duration"
    assert clock.t - stopped_at >= 10, "not before a's renew deadline has passed"
    assert not a.is_leader()  # a, had it survived, already knows it is no longer leader
    assert not await a.step()  # and it cannot take the lease back while b renews
    assert b.observed is not None and b.observed.transitions == 1


async def test_release_hands_over_at_once(apis: list[KubeApi]) -> None:
    clock = Clock()
    a, b = electors(apis, clock)
    assert await a.step()
    await a.release()
    assert not a.is_leader()
    assert await b.step()


async def test_two_candidates_at_once_make_one_leader(apis: list[KubeApi]) -> None:
    import asyncio

    clock = Clock()
    a, b = electors(apis, clock)
    results = await asyncio.gather(a.step(), b.step())
    assert sorted(results) == [False, True]


async def test_api_down_means_not_leader_after_the_renew_deadline(k8s: Harness,
                                                                  apis: list[KubeApi]) -> None:
    clock = Clock()
    a, _ = electors(apis, clock)
    assert await a.step()
    await k8s.emu.close()  # the API server goes away
    clock.t += 5
    assert await a.step()  # still inside the renew deadline
    clock.t += 6
    assert not await a.step()


def test_config_orders_its_durations() -> None:
    with pytest.raises(ValueError):
        ElectionConfig(identity="x", lease_duration_s=10, renew_deadline_s=10)
