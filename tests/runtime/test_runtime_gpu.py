"""runtime/gpu.py against the NVML fake, and without NVML."""

from __future__ import annotations

import logging

import pytest
from fake_nvml import GIB, FakeGpu, FakeNvml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.gpu import GpuCollector, GpuInfo, GpuInventory


def test_devices_report_memory_and_utilization() -> None:
    nvml = FakeNvml([FakeGpu(name="A"), FakeGpu(name="B", memory_total_bytes=40 * GIB)])
    nvml.set_memory_used(1, 10 * GIB)
    nvml.set_utilization(1, 0.5)
    inventory = GpuInventory(nvml)
    assert inventory.devices() == [
        GpuInfo(0, "A", 80 * GIB, 1 * GIB, 0.0),
        GpuInfo(1, "B", 40 * GIB, 10 * GIB, 0.5),
    ]
    assert inventory.devices()[1].memory_free_bytes == 30 * GIB


def test_figures_are_read_fresh_and_init_happens_once() -> None:
    nvml = FakeNvml()
    inventory = GpuInventory(nvml)
    assert inventory.devices()[0].memory_used_bytes == 1 * GIB
    nvml.set_memory_used(0, 70 * GIB)
    assert inventory.devices()[0].memory_used_bytes == 70 * GIB
    assert nvml.init_calls == 1


def test_a_failing_device_is_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml()
    nvml.fail_device(0)
    inventory = GpuInventory(nvml)
    with caplog.at_level(logging.WARNING, logger="runtime.gpu"):
        assert [g.index for g in inventory.devices()] == [1]
        assert [g.index for g in inventory.devices()] == [1]
    assert len([r for r in caplog.records if "gpu 0" in r.getMessage()]) == 1
    nvml.fail_device(0, failing=False)
    assert [g.index for g in inventory.devices()] == [0, 1]


def test_no_driver_means_no_devices_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml(init_error="Driver Not Loaded")
    inventory = GpuInventory(nvml)
    with caplog.at_level(logging.INFO, logger="runtime.gpu"):
        assert inventory.devices() == []
        assert inventory.devices() == []
        assert not inventory.available
    assert nvml.init_calls == 1
    assert len([r for r in caplog.records if "NVML unavailable" in r.getMessage()]) == 1


def test_real_pynvml_without_a_gpu_carries_on() -> None:
    # On a machine with a GPU this reads it; here (no libnvidia-ml) it must return [] quietly.
    devices = GpuInventory().devices()
    assert all(isinstance(d, GpuInfo) and d.memory_total_bytes > 0 for d in devices)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels["gpu"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prometheus_gauges_follow_the_devices() -> None:
    nvml = FakeNvml()
    registry = CollectorRegistry()
    registry.register(GpuCollector(GpuInventory(nvml)))
    nvml.set_memory_used(1, 2 * GIB)
    nvml.set_utilization(0, 0.25)
    got = samples(registry)
    assert got[("zeroserve_gpu_memory_used_bytes", "1")] == 2 * GIB
    assert got[("zeroserve_gpu_memory_total_bytes", "0")] == 80 * GIB
    assert got[("zeroserve_gpu_utilization_ratio", "0")] == 0.25
    assert got[("zeroserve_gpu_utilization_ratio", "1")] == 0.0
    nvml.set_memory_used(1, 3 * GIB)
    assert samples(registry)[("zeroserve_gpu_memory_used_bytes", "1")] == 3 * GIB


def test_no_gpu_means_empty_gauges() -> None:
    registry = CollectorRegistry()
    registry.register(GpuCollector(GpuInventory(FakeNvml(init_error="NVML Shared Library Not Found"))))
    text = generate_latest(registry).decode()
    assert "zeroserve_gpu_memory_used_bytes" in text  # declared (HELP/TYPE) with no samples
    assert 'gpu="' not in text
