"""A hand-written NVML stand-in for tests (no GPU here): two GPUs whose figures a test can change.

It implements the pynvml function names that ``runtime.gpu.NvmlLike`` lists, so it is injected at
that boundary: ``GpuInventory(FakeNvml())``. Tests in this folder import it as
``from fake_nvml import FakeNvml`` (pytest puts the folder on sys.path); tests elsewhere as
``from tests.runtime.fake_nvml import FakeNvml`` (tests/conftest.py puts the repo root on sys.path).

    nvml = FakeNvml()                           # 2 x 80 GiB, 1 GiB used, idle
    nvml.set_memory_used(1, 40 * GIB)
    nvml.set_utilization(0, 0.75)
    nvml.fail_device(1)                         # reads of gpu 1 raise, as after an Xid error
    FakeNvml(init_error="Driver Not Loaded")    # like a machine with the library but no driver
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


class FakeNvmlError(Exception):
    """Raised where pynvml would raise an NVMLError."""


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    memory_total_bytes: int = 80 * GIB
    memory_used_bytes: int = 1 * GIB
    utilization_percent: int = 0
    failing: bool = False


@dataclass(frozen=True)
class MemoryInfo:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class Utilization:
    gpu: int
    memory: int


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu] | None = None, *, init_error: str | None = None) -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu(), FakeGpu()]
        self.init_error = init_error
        self.init_calls = 0
        self.reads = 0

    # --- knobs for tests ---
    def set_memory_used(self, index: int, used_bytes: int) -> None:
        self.gpus[index].memory_used_bytes = used_bytes

    def set_utilization(self, index: int, ratio: float) -> None:
        self.gpus[index].utilization_percent = round(ratio * 100)

    def fail_device(self, index: int, failing: bool = True) -> None:
        self.gpus[index].failing = failing

    # --- the pynvml surface ---
    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not 0 <= index < len(self.gpus):
            raise FakeNvmlError("Invalid Argument")
        return self.gpus[index]

    def _check(self, handle: FakeGpu) -> FakeGpu:
        self.reads += 1
        if handle.failing:
            raise FakeNvmlError("GPU is lost")
        return handle

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._check(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> MemoryInfo:
        gpu = self._check(handle)
        return MemoryInfo(
            gpu.memory_total_bytes, gpu.memory_used_bytes, gpu.memory_total_bytes - gpu.memory_used_bytes
        )

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Utilization:
        return Utilization(self._check(handle).utilization_percent, 0)
