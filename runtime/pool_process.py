"""The warm pool process's state machine: warm up once, then load a model, serve it, unload it.

A fresh process spends most of a GPU cold start before reading any weight: importing torch and
transformers, creating the CUDA context, loading kernels on first use. A pool process pays all that
up front, in a worker thread: it imports torch + transformers, creates the CUDA context, allocates
the loader's pinned staging buffers and generates two tokens with a tiny random Llama (same code
path as a real request). A scale from zero then costs only a load (weights, from disk or from
parked host memory) and one token. Module-level imports are the core install's only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.parking import ParkingLot, to_host
from runtime.server.hf import HFModel
from runtime.server.host import ModelHost, in_daemon_thread
from runtime.server.model import ModelConfig

if TYPE_CHECKING:
    import torch

    from runtime.shard_reader import Loader

log = logging.getLogger(__name__)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def warm_generation_path() -> tuple[torch.device, Loader]:
    """Imports, CUDA context, pinned buffers, and two generated tokens from a tiny random Llama."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from runtime.server.hf import Decoder, pick_device
    from runtime.server.model import GenerationParams
    from runtime.shard_reader import Loader

    device = pick_device()
    if device.type == "cuda":
        torch.cuda.init()  # type: ignore[no-untyped-call]
        torch.empty(1, device=device)          # creates the context now, not on the first load
    loader = Loader()
    loader.warm(device)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, max_position_embeddings=128)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model: Any = LlamaForCausalLM(config)
    model = model.to(device=device, dtype=dtype).eval()
    decoder = Decoder(model, device, [1, 2, 3], GenerationParams(max_tokens=2, temperature=0.0))
    decoder.step()
    decoder.step()
    del decoder, model
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return device, loader


class PoolBusy(Exception):
    """The pool process is not in the state the request needs (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class _ParkedSource:
    model_dir: str       # where it was loaded from last (informative)
    identity: str        # runtime.shards.checkpoint_identity: what must match to reuse the weights


class WarmPool:
    """The pool process's state machine around one :class:`ModelHost`."""

    def __init__(self, host: ModelHost, lot: ParkingLot, *, drain_grace_s: float = 30.0) -> None:
        self.host = host
        self.lot = lot
        self.drain_grace_s = drain_grace_s
        self.state = "warming"
        self.device: torch.device | None = None
        self.loader: Loader | None = None
        self.warm_s: float | None = None
        self.warm_error: str | None = None
        self.last_load: dict[str, Any] | None = None
        self._parked_dirs: dict[str, _ParkedSource] = {}
        self._skeletons: dict[str, Any] = {}     # parked model name -> its module, weights on meta
        self._identity = ""
        self._warmed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def warm(self) -> None:
        started = time.perf_counter()
        try:
            self.device, self.loader = await in_daemon_thread(warm_generation_path, "pool-warm-up")
            self.state = "idle"
        except Exception as e:   # reported in /pool/status; the backend replaces this process
            log.exception("pool warm-up failed")
            self.warm_error = f"{type(e).__name__}: {e}"
            self.state = "failed"
        self.warm_s = time.perf_counter() - started
        log.info("pool %s in %.3f s device=%s rss=%d", self.state, self.warm_s, self.device, rss_bytes())
        self._warmed.set()

    async def load(self, model_dir: Path, model_name: str) -> dict[str, Any]:
        await self._warmed.wait()
        async with self._lock:
            if self.state != "idle":
                raise PoolBusy(f"pool process is {self.state}, not idle")
            self.state = "loading"
            from runtime.shards import checkpoint_identity

            try:
                identity = await asyncio.to_thread(checkpoint_identity, model_dir)
            except Exception:
                self.state = "idle"
                raise
            source = self._parked_dirs.get(model_name)
            parked = self.lot.get(model_name) if source and source.identity == identity else None
            if source is not None and parked is None:   # a new version of the model: the old one is stale
                self.lot.drop(model_name)
                self._parked_dirs.pop(model_name, None)
                self._skeletons.pop(model_name, None)
            self._identity = identity
            skeleton = self._skeletons.pop(model_name, None) if parked else None
            model = HFModel(ModelConfig(name=model_name, model_dir=model_dir), loader=self.loader,
                            parked=parked.tensors if parked else None, skeleton=skeleton)
            self.host.model, self.host.name, self.host.state = model, model_name, "loading"
            started_unix = time.time()
            try:
                await self.host.load()
            except Exception:
                log.exception("pool load failed model=%s dir=%s", model_name, model_dir)
                self._reset()
                raise
            assert model.loaded is not None
            loaded = model.loaded
            self.state = "serving"
            self.last_load = {
                "model_name": model_name,
                "model_dir": str(model_dir),
                "source": loaded.source,
                "bytes": loaded.bytes_loaded,
                "started_unix": started_unix,
                "ready_unix": model.ready_unix,
                "load_s": time.time() - started_unix,
                "phases_s": dict(loaded.timings_s),
                "read_GBps": loaded.stats.gbps,
                "readers": loaded.stats.readers,
            }
            return self.last_load

    async def unload(self, *, park: bool) -> dict[str, Any]:
        async with self._lock:
            if self.state != "serving":
                raise PoolBusy(f"pool process is {self.state}, nothing to unload")
            self.state = "unloading"
            self.host.state = "loading"    # readiness 503: the activator stops sending here
            drained = await self.host.wait_idle(self.drain_grace_s)
            model = self.host.model
            assert isinstance(model, HFModel) and model.loaded is not None
            name, model_dir = model.name, model.model_dir
            started = time.perf_counter()
            # A model loaded from parked weights still has them parked: nothing to copy back.
            if park and name not in self.lot:
                tensors = await asyncio.to_thread(to_host, model.loaded.tensors)
                if self.lot.park(name, tensors):
                    self._parked_dirs[name] = _ParkedSource(str(model_dir), self._identity)
            self._parked_dirs = {k: v for k, v in self._parked_dirs.items() if k in self.lot}
            parked = name in self.lot
            if parked:
                # Keep the module too, weights stripped: the next start skips building it.
                from runtime.loader import strip_weights

                strip_weights(model.loaded.model)
                self._skeletons[name] = model.loaded.model
            self._skeletons = {k: v for k, v in self._skeletons.items() if k in self.lot}
            model.unload()
            self._reset()
            return {"model_name": name, "parked": parked, "drained": drained,
                    "unload_s": time.perf_counter() - started}

    def _reset(self) -> None:
        self.host.model = HFModel(ModelConfig(name=""))
        self.host.name = ""
        self.host.state = "loading"
        self.state = "idle"
        gc.collect()
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def status(self) -> dict[str, Any]:
        model = self.host.model
        last = dict(self.last_load) if self.last_load else None
        if last is not None and isinstance(model, HFModel) and model.name == last["model_name"]:
            last["first_token_s"] = model.first_token_s
            last["first_token_unix"] = model.first_token_unix
        return {
            "state": self.state,
            "model_name": self.host.name or None,
            "device": str(self.device) if self.device else None,
            "warm_s": self.warm_s,
            "warm_error": self.warm_error,
            "rss_bytes": rss_bytes(),
            "parked": [{"model_name": k, "model_dir": v.model_dir} for k, v in self._parked_dirs.items()],
            "park": self.lot.status(),
            "last_load": last,
        }

