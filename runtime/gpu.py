"""GPU inventory over NVML: devices, memory and utilization, and their Prometheus gauges.

All NVML access goes through :class:`NvmlLike`, whose method names are pynvml's own, so the real
``pynvml`` module (package ``nvidia-ml-py``) satisfies it as is and a hand-written fake
(``tests/runtime/fake_nvml.py``) can be injected in tests. Without a GPU, a driver or the package,
the inventory logs once and reports no devices; nothing here raises for lack of a GPU.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


class NvmlLike(Protocol):
    """The slice of NVML the inventory reads (names as in pynvml)."""

    def nvmlInit(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # .total .used .free in bytes
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...  # .gpu in percent


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization: float  # 0..1, NVML's busy fraction over its last sample period

    @property
    def memory_free_bytes(self) -> int:
        return max(0, self.memory_total_bytes - self.memory_used_bytes)


def _load_pynvml() -> NvmlLike:
    import pynvml  # lazy: a CPU-only process should not pay for it at import time

    return pynvml  # type: ignore[no-any-return]


class GpuInventory:
    """Reads the machine's GPUs on demand. Thread-safe; NVML is initialised once, lazily."""

    def __init__(self, nvml: NvmlLike | None = None) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._initialised = False
        self._unavailable = False
        self._warned_devices: set[int] = set()

    def _init(self) -> NvmlLike | None:
        if self._initialised or self._unavailable:
            return self._nvml if self._initialised else None
        try:
            nvml = self._nvml if self._nvml is not None else _load_pynvml()
            nvml.nvmlInit()
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded...
            self._unavailable = True
            log.info("no GPU inventory (NVML unavailable: %s); reporting no devices", e)
            return None
        self._nvml = nvml
        self._initialised = True
        return nvml

    @property
    def available(self) -> bool:
        with self._lock:
            return self._init() is not None

    def devices(self) -> list[GpuInfo]:
        with self._lock:
            nvml = self._init()
            if nvml is None:
                return []
            try:
                count = nvml.nvmlDeviceGetCount()
            except Exception as e:
                log.warning("NVML device count failed: %s", e)
                return []
            return [info for i in range(count) if (info := self._read(nvml, i)) is not None]

    def _read(self, nvml: NvmlLike, index: int) -> GpuInfo | None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
        except Exception as e:  # one lost device (Xid, MIG reconfig) must not hide the others
            if index not in self._warned_devices:
                self._warned_devices.add(index)
                log.warning("NVML read of gpu %d failed: %s", index, e)
            return None
        return GpuInfo(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name),
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            utilization=float(util.gpu) / 100.0,
        )


class GpuCollector:
    """Prometheus collector: reads the inventory at scrape time, so gauges are never stale."""

    def __init__(self, inventory: GpuInventory) -> None:
        self.inventory = inventory

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        used = GaugeMetricFamily("zeroserve_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("zeroserve_gpu_memory_total_bytes", "GPU memory in total", labels=["gpu"])
        util = GaugeMetricFamily(
            "zeroserve_gpu_utilization_ratio", "GPU busy fraction (0..1)", labels=["gpu"]
        )
        for gpu in self.inventory.devices():
            label = [str(gpu.index)]
            used.add_metric(label, gpu.memory_used_bytes)
            total.add_metric(label, gpu.memory_total_bytes)
            util.add_metric(label, gpu.utilization)
        yield from (used, total, util)

    def describe(self) -> Iterator[Any]:
        # Declared so that registering does not trigger an NVML read (prometheus calls describe()).
        return iter(())
