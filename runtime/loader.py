"""Fast model loading: a skeleton built on the meta device, its weights read from shards, installed in place.

``from_pretrained`` builds the model with random weights, then reads each shard (mmap, a host copy,
a device copy). Here the model's parameters are created on the meta device (no memory, no init
kernels), each shard's header is parsed by hand (:mod:`runtime.shards`) and reader threads
``preadv`` the bytes straight into device tensors (:mod:`runtime.shard_reader`) while the skeleton
is built; the tensors then become the model's parameters without a copy.

torch and transformers are imported inside functions: the core install never pays for them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.shard_reader import Loader, LoadStats, Reading
from runtime.shards import LoaderError, checkpoint_dtype, read_header, shard_files

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device but real buffers.

    ``torch.device("meta")`` would also leave computed buffers (rotary ``inv_freq``) empty, and the
    checkpoint does not hold them; so only parameters move to meta, as they are registered, which
    also makes every init kernel that follows (``reset_parameters``, ``_init_weights``) a no-op.
    """
    import torch

    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any                          # a transformers PreTrainedModel, in eval mode
    tensors: Mapping[str, torch.Tensor]  # checkpoint name -> the model's own device tensor
    device: torch.device
    bytes_loaded: int
    source: str                         # "disk" | "parked"
    timings_s: Mapping[str, float]      # config, build, read, install
    stats: LoadStats



def build_skeleton(model_dir: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with parameters_on_meta():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)  # type: ignore[no-untyped-call]


def copy_tensors(source: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Device tensors holding ``source`` (parked host weights): one copy each, async from pinned.

    On CPU the parked tensors already are where the model computes: it uses them in place (inference
    never writes its weights), so a parked CPU start copies nothing.
    """
    import torch

    if device.type == "cpu" and all(t.device.type == "cpu" for t in source.values()):
        return dict(source)
    out = {name: torch.empty_like(t, device=device) for name, t in source.items()}
    for name, t in source.items():
        out[name].copy_(t, non_blocking=t.is_pinned())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def install(model: Any, tensors: Mapping[str, torch.Tensor], device: torch.device) -> None:
    """Make ``tensors`` the model's parameters (no copy), re-tie shared weights, check nothing is left."""
    expected = set(model.state_dict().keys())
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        log.warning("checkpoint tensors the model does not use: %s", ", ".join(unexpected[:5]))
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=False, assign=True)
    # The tied copy (lm_head.weight) is absent from the checkpoint: point it at the loaded tensor.
    model.tie_weights()
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.device.type == "meta"]
    if missing:
        raise LoaderError(f"checkpoint lacks {len(missing)} tensors the model needs: {missing[:5]}")
    model.to(device)   # the computed buffers (rotary frequencies); parameters are there already
    model.eval()


def strip_weights(model: Any) -> None:
    """Put every parameter back on the meta device, keeping the module: a skeleton that the next
    :func:`load_model` of the same checkpoint can reuse (``skeleton=``) instead of building one."""
    import torch

    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.device.type != "meta":
                module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)


def load_model(model_dir: Path, device: torch.device, *, loader: Loader,
               parked: Mapping[str, torch.Tensor] | None = None, skeleton: Any = None) -> LoadedModel:
    """Skeleton on meta, weights from disk (or from parked host tensors), installed without a copy.

    ``skeleton``: a module of this same checkpoint whose weights were stripped (:func:`strip_weights`)."""
    t0 = time.perf_counter()
    shards = [read_header(p) for p in shard_files(model_dir)]
    t1 = time.perf_counter()
    reading: Reading | None = None
    if parked is None:
        # The readers need only the headers: they run (GIL released in preadv) while the skeleton
        # is built, which is Python-heavy; "read" below is then only the part not hidden by "build".
        tensors = loader.allocate(shards, device)
        reading = loader.start(shards, tensors)
    try:
        model = skeleton if skeleton is not None else build_skeleton(model_dir, checkpoint_dtype(shards))
    except BaseException:
        if reading is not None:   # let the readers finish with the tensors before they are dropped
            with contextlib.suppress(BaseException):
                reading.join()
        raise
    t2 = time.perf_counter()
    if reading is not None:
        stats = reading.join()
        source = "disk"
    else:
        assert parked is not None
        tensors = copy_tensors(parked, device)
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        stats = LoadStats(nbytes, time.perf_counter() - t2, 1, str(device))
        source = "parked"
    t3 = time.perf_counter()
    install(model, tensors, device)
    t4 = time.perf_counter()
    timings = {"headers": t1 - t0, "build": t2 - t1, "read": t3 - t2, "install": t4 - t3, "load": t4 - t0,
               "read_total": stats.seconds}
    log.info("loaded %s from %s: %d bytes in %.3f s (%.2f GB/s read)", model_dir, source,
             stats.bytes_read, t4 - t0, stats.gbps)
    return LoadedModel(model, tensors, device, stats.bytes_read, source, timings, stats)
