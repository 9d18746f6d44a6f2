"""Parked weights: a model scaled to zero keeps its tensors in (pinned) host memory, under a budget.

Where parked weights live: in the warm pool process that last served the model. On a scale to zero
with ``scaling.park: true`` the backend does not end that process; it asks it to unload with
``park`` (``POST /pool/unload``): the GPU weights are copied once into pinned host memory (on CPU
the model's own tensors are kept), the GPU memory is freed and the process is an idle pool process
again, listing the model in ``GET /pool/status`` ``parked``. The next scale from zero of that model
goes to that process, and its load is a straight pinned host -> GPU copy (55 GB/s on an H100)
instead of a read from disk.

That was chosen over shared memory files under /dev/shm that a new process maps: those would have
to be registered with CUDA (``cudaHostRegister``) in the new process before they copy at pinned
speed, and registering gigabytes costs about as much as the copy; the pool process already holds
pinned memory and a CUDA context, so keeping the tensors there needs no protocol at all. The price:
parked weights die with their pool process, and a model parked in one process cannot be loaded by
another (the backend routes by ``parked``).

The budget is per pool process (``--park-budget-bytes``); least recently used models are evicted
first. torch's pinned-memory allocator caches freed blocks, so eviction also empties that cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PARK_BUDGET_ENV = "ZEROSERVE_PARK_BUDGET_BYTES"


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass(frozen=True, slots=True)
class ParkedModel:
    key: str
    tensors: Mapping[str, torch.Tensor]   # host tensors (pinned when they came from a GPU)
    nbytes: int
    parked_unix: float


def default_budget_bytes() -> int:
    """``$ZEROSERVE_PARK_BUDGET_BYTES``, else a quarter of physical memory."""
    raw = os.environ.get(PARK_BUDGET_ENV)
    if raw is not None:
        try:
            return max(0, int(raw))
        except ValueError:
            log.warning("%s=%r is not an integer; using the default", PARK_BUDGET_ENV, raw)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 0


class ParkingLot:
    """Parked models by key, least recently used first, never over ``budget_bytes`` in total."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes = {budget_bytes}, must be >= 0")
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, ParkedModel] = OrderedDict()
        self.evictions = 0

    @property
    def used_bytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._models)

    def __contains__(self, key: object) -> bool:
        return key in self._models

    def park(self, key: str, tensors: Mapping[str, torch.Tensor], *, now_unix: float | None = None) -> bool:
        """Keep ``tensors`` under ``key``, evicting the least recently used others to fit.

        Returns False (and keeps nothing) when the model alone is larger than the whole budget:
        evicting everything else for a model that cannot fit anyway would only lose them too.
        """
        nbytes = tensor_bytes(tensors)
        self._models.pop(key, None)
        if nbytes > self.budget_bytes:
            log.info("not parking %s: %d bytes > budget %d", key, nbytes, self.budget_bytes)
            return False
        freed = False
        while self._models and self.used_bytes + nbytes > self.budget_bytes:
            old, model = self._models.popitem(last=False)
            self.evictions += 1
            freed = True
            log.info("evicted parked %s (%d bytes) to fit %s", old, model.nbytes, key)
        self._models[key] = ParkedModel(key, tensors, nbytes, time.time() if now_unix is None else now_unix)
        if freed:
            release_host_cache()
        return True

    def get(self, key: str) -> ParkedModel | None:
        """The parked model, marked most recently used."""
        model = self._models.get(key)
        if model is not None:
            self._models.move_to_end(key)
        return model

    def drop(self, key: str) -> bool:
        if self._models.pop(key, None) is None:
            return False
        release_host_cache()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "evictions": self.evictions,
            "models": [{"key": m.key, "bytes": m.nbytes, "parked_unix": m.parked_unix}
                       for m in self._models.values()],
        }


def to_host(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Host copies to park: device tensors are copied into pinned memory; host tensors are kept as
    they are (the model that owned them is about to be dropped, so nothing else holds them)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    devices: set[torch.device] = set()
    for name, t in tensors.items():
        if t.device.type == "cpu":
            out[name] = t.detach()
            continue
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t.detach(), non_blocking=True)
        out[name] = host
        devices.add(t.device)
    for device in devices:
        torch.cuda.synchronize(device)
    return out


def release_host_cache() -> None:
    """Give freed pinned blocks back to the OS (torch keeps them cached for reuse otherwise)."""
    import sys

    torch = sys.modules.get("torch")
    empty = getattr(getattr(torch, "_C", None), "_host_emptyCache", None)
    if torch is not None and empty is not None and torch.cuda.is_available():
        empty()
