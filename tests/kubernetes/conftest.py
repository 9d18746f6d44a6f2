"""Fixtures: the Kubernetes API emulator with its fake cluster, checked against the Roles."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from emulator import ApiEmulator
from fake_cluster import FakeCluster, standin_launcher
from k8s_harness import Harness, allowed, load_crd, load_roles, role_of


@pytest.fixture
async def k8s() -> AsyncIterator[Harness]:
    emu = ApiEmulator()
    emu.register_crd(load_crd())
    await emu.start()
    cluster = FakeCluster(emu.store, standin_launcher(), gpus=0)
    await cluster.start()
    try:
        yield Harness(emu, cluster)
    finally:
        await cluster.close()
        await emu.close()
    roles = load_roles()
    for access in emu.accesses:
        role = role_of(access.identity)
        if role is not None:
            assert allowed(roles[role], access), f"{role} may not {access}"
