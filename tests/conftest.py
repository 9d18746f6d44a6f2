"""Shared fixtures: free ports, spec snippets, and a clean Prometheus registry per test."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Property tests check results, not speed: Hypothesis's default 200 ms deadline per example (and
# its too-slow health check) fail a correct test whenever a shared machine stalls the process
# ("Unreliable test timings", reported as Flaky).
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


# Ports handed out by free_port() in this process. A port is only reserved until its socket closes,
# so two calls can return the same one (about 1 in 12,000 pairs here) before either server binds it:
# `up --port P --admin-port P` then fails to start. Never hand out the same port twice.
_given: set[int] = set()


def free_port() -> int:
    port = 0
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _given:
            break
    _given.add(port)
    return port


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
