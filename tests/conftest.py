"""Shared fixtures: free ports, spec snippets, and a clean Prometheus registry per test."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()
