"""Fast weight loading: safetensors shards straight into device tensors, read in parallel.

``from_pretrained`` builds the model with random weights, then reads each shard (mmap, a host copy,
a device copy). Here the model's parameters are created on the meta device (no memory, no init
kernels), each shard's header is parsed by hand (8-byte little-endian length, JSON, raw bytes), and
reader threads ``preadv`` the bytes:

- on CPU, straight into the destination tensors' memory (one copy: page cache -> tensor);
- on CUDA, into pinned staging buffers owned by each reader (two per reader, so the next read
  overlaps the previous host-to-device copy), copied with ``non_blocking`` on the reader's own
  stream; an event per buffer says when it may be reused. No full host copy of the model exists.

The bytes are copied verbatim, so the tensors equal ``safetensors.torch.load_file``'s bit for bit.
torch and transformers are imported inside functions: the core install never pays for them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 20
_MAX_PIECES = 512          # below IOV_MAX (1024): one preadv per chunk scatters into its tensors
_HEADER_LIMIT = 100 << 20  # safetensors' own cap on the JSON header

# safetensors dtype name -> (torch dtype attribute, bytes per element)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}


class LoaderError(Exception):
    """A shard is malformed or does not fit the model it is loaded into."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str                 # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    offset_bytes: int          # absolute offset in the file
    nbytes: int


@dataclass(frozen=True, slots=True)
class Shard:
    path: Path
    size_bytes: int
    entries: tuple[TensorEntry, ...]   # sorted by offset
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LoadStats:
    bytes_read: int
    seconds: float
    readers: int
    device: str

    @property
    def gbps(self) -> float:
        return self.bytes_read / self.seconds / 1e9 if self.seconds > 0 else 0.0


def read_header(path: Path) -> Shard:
    """Parse a safetensors file's header and check every entry lies inside the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise LoaderError(f"{path}: shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _HEADER_LIMIT or 8 + header_len > size:
            raise LoaderError(f"{path}: header length {header_len} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LoaderError(f"{path}: header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise LoaderError(f"{path}: header is not a JSON object")
    base = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    entries = [_entry(path, name, spec, base, size) for name, spec in header.items()]
    entries.sort(key=lambda e: e.offset_bytes)
    for a, b in itertools.pairwise(entries):
        if a.offset_bytes + a.nbytes > b.offset_bytes:
            raise LoaderError(f"{path}: tensors {a.name} and {b.name} overlap")
    return Shard(path, size, tuple(entries), metadata)


def _entry(path: Path, name: str, spec: Any, base: int, size: int) -> TensorEntry:
    if not isinstance(spec, dict) or spec.get("dtype") not in _DTYPES:
        raise LoaderError(f"{path}: tensor {name}: unknown or missing dtype")
    shape, offsets = spec.get("shape"), spec.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise LoaderError(f"{path}: tensor {name}: bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise LoaderError(f"{path}: tensor {name}: bad data_offsets {offsets!r}")
    start, end = offsets
    count = 1
    for d in shape:
        count *= d
    nbytes = count * _DTYPES[spec["dtype"]][1]
    if not 0 <= start <= end or end - start != nbytes or base + end > size:
        raise LoaderError(f"{path}: tensor {name}: offsets {offsets} do not hold {shape} {spec['dtype']}")
    return TensorEntry(name, spec["dtype"], tuple(shape), base + start, nbytes)


def shard_files(model_dir: Path) -> list[Path]:
    """The checkpoint's shards: those the index names, else every *.safetensors file."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LoaderError(f"{model_dir}: no *.safetensors files")
    return files


def checkpoint_identity(model_dir: Path) -> str:
    """Which files these are, not where they sit: the backend hands each replica its own directory of
    hard links (or symlinks) into the node cache, so two directories holding the same cache entry
    give the same identity, and a new version (a new cache entry) a different one."""
    files = [*shard_files(model_dir), model_dir / "config.json"]
    parts = []
    for f in files:
        st = f.stat()   # follows symlinks
        parts.append(f"{f.name}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, _DTYPES[name][0])
    return dtype


@dataclass(frozen=True, slots=True)
class _Piece:
    name: str
    dest_offset: int     # byte offset in the destination tensor
    chunk_offset: int    # byte offset in the chunk
    nbytes: int


@dataclass(frozen=True, slots=True)
class _Chunk:
    path: Path
    file_offset: int
    nbytes: int
    pieces: tuple[_Piece, ...]


def plan_chunks(shards: Sequence[Shard], chunk_bytes: int = CHUNK_BYTES) -> list[_Chunk]:
    """Cut each shard's contiguous tensor bytes into reads of at most ``chunk_bytes``."""
    chunks: list[_Chunk] = []
    for shard in shards:
        start, pieces, filled = 0, list[_Piece](), 0
        for e in shard.entries:
            done = 0
            while done < e.nbytes:
                at = e.offset_bytes + done
                if pieces and (start + filled != at or filled == chunk_bytes or len(pieces) == _MAX_PIECES):
                    chunks.append(_Chunk(shard.path, start, filled, tuple(pieces)))
                    pieces, filled = [], 0
                if not pieces:
                    start = at
                n = min(e.nbytes - done, chunk_bytes - filled)
                pieces.append(_Piece(e.name, done, filled, n))
                filled += n
                done += n
        if pieces:
            chunks.append(_Chunk(shard.path, start, filled, tuple(pieces)))
    return chunks


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    import torch

    return t.reshape(-1).view(torch.uint8)


def _memory(t: torch.Tensor) -> memoryview:
    """A writable view of a host uint8 tensor's bytes, for preadv."""
    return t.numpy().data


def _pread_full(fd: int, buffers: list[memoryview], offset: int) -> None:
    want = sum(len(b) for b in buffers)
    got = os.preadv(fd, buffers, offset)
    if got == want:
        return
    # A short read (signals, odd filesystems): finish piece by piece.
    for b in buffers:
        n = len(b)
        if got >= n:
            got -= n
            offset += n
            continue
        pos = got
        got = 0
        while pos < n:
            r = os.preadv(fd, [b[pos:]], offset + pos)
            if r <= 0:
                raise LoaderError(f"unexpected end of file at byte {offset + pos}")
            pos += r
        offset += n


class Reading:
    """Reader threads at work (:meth:`Loader.start`); :meth:`join` waits and returns the throughput."""

    def __init__(self, nbytes: int, readers: int, device: torch.device | None) -> None:
        self.nbytes = nbytes
        self.readers = readers
        self.device = device
        self.started = time.perf_counter()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.finished: list[float] = []    # each reader's end, its copies included (list.append is atomic)

    def join(self) -> LoadStats:
        for t in self.threads:
            t.join()
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        if self.errors:
            raise self.errors[0]
        end = max(self.finished, default=time.perf_counter())
        return LoadStats(self.nbytes, end - self.started, self.readers, str(self.device or "cpu"))


class Loader:
    """Reads shards into tensors with ``readers`` threads; keeps its pinned staging buffers."""

    def __init__(self, *, readers: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.readers = readers or min(8, max(2, os.cpu_count() or 2))
        self.chunk_bytes = chunk_bytes
        self._staging: list[tuple[torch.Tensor, torch.Tensor]] = []   # per reader: 2 pinned buffers
        self._device: torch.device | None = None

    def warm(self, device: torch.device) -> None:
        """Allocate the pinned buffers now (cudaHostAlloc of 1 GiB takes a noticeable time)."""
        if device.type == "cuda" and not self._staging:
            import torch

            self._staging = [
                (torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True),
                 torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=True))
                for _ in range(self.readers)
            ]

    def allocate(self, shards: Sequence[Shard], device: torch.device) -> dict[str, torch.Tensor]:
        import torch

        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            for e in shard.entries:
                if e.name in out:
                    raise LoaderError(f"tensor {e.name} appears in more than one shard")
                out[e.name] = torch.empty(e.shape, dtype=torch_dtype(e.dtype), device=device)
        return out

    def read(self, shards: Sequence[Shard], dest: Mapping[str, torch.Tensor]) -> LoadStats:
        """Fill ``dest`` (from :meth:`allocate`) with the shards' bytes; returns the throughput."""
        return self.start(shards, dest).join()

    def start(self, shards: Sequence[Shard], dest: Mapping[str, torch.Tensor]) -> Reading:
        """Start the readers and return at once, so the caller can build the model meanwhile."""
        chunks = plan_chunks(shards, self.chunk_bytes)
        device = next(iter(dest.values())).device if dest else None
        views = {name: _byte_view(t) for name, t in dest.items()}
        work: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()
        for c in chunks:
            work.put(c)
        readers = min(self.readers, max(1, len(chunks)))
        cuda = device is not None and device.type == "cuda"
        if cuda:
            assert device is not None
            self.warm(device)
            self._device = device
            import torch

            # The readers copy on their own streams, which are not ordered after the default
            # stream: let anything still queued there on this memory (a freed model's last kernels)
            # finish first.
            torch.cuda.current_stream(device).synchronize()
        reading = Reading(sum(c.nbytes for c in chunks), readers, device)
        reading.threads = [
            threading.Thread(target=self._run_reader, args=(i, work, views, cuda, reading), daemon=True)
            for i in range(readers)
        ]
        for t in reading.threads:
            t.start()
        return reading

    def _run_reader(self, index: int, work: queue.SimpleQueue[_Chunk], views: Mapping[str, torch.Tensor],
                    cuda: bool, reading: Reading) -> None:
        fds: dict[Path, int] = {}
        try:
            if cuda:
                self._cuda_reader(index, work, views, fds)
            else:
                self._cpu_reader(work, views, fds)
        except BaseException as e:  # handed to the caller; the other readers drain and stop
            reading.errors.append(e)
            with contextlib.suppress(queue.Empty):
                while True:
                    work.get_nowait()
        finally:
            for fd in fds.values():
                os.close(fd)
            reading.finished.append(time.perf_counter())

    @staticmethod
    def _chunks(work: queue.SimpleQueue[_Chunk], fds: dict[Path, int]) -> Iterator[tuple[int, _Chunk]]:
        while True:
            try:
                c = work.get_nowait()
            except queue.Empty:
                return
            fd = fds.get(c.path)
            if fd is None:
                fd = fds[c.path] = os.open(c.path, os.O_RDONLY)
            yield fd, c

    def _cpu_reader(self, work: queue.SimpleQueue[_Chunk], views: Mapping[str, torch.Tensor],
                    fds: dict[Path, int]) -> None:
        for fd, c in self._chunks(work, fds):
            bufs = [_memory(views[p.name][p.dest_offset : p.dest_offset + p.nbytes]) for p in c.pieces]
            _pread_full(fd, bufs, c.file_offset)

    def _cuda_reader(self, index: int, work: queue.SimpleQueue[_Chunk], views: Mapping[str, torch.Tensor],
                     fds: dict[Path, int]) -> None:
        import torch

        torch.cuda.set_device(self._device)   # the current device is per thread
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        buffers = self._staging[index]
        events = (torch.cuda.Event(), torch.cuda.Event())  # type: ignore[no-untyped-call]
        used = [False, False]
        k = 0
        for fd, c in self._chunks(work, fds):
            if used[k]:
                events[k].synchronize()   # the copy out of this buffer has finished: safe to overwrite
            buf = buffers[k]
            _pread_full(fd, [_memory(buf[: c.nbytes])], c.file_offset)
            with torch.cuda.stream(stream):
                for p in c.pieces:
                    dst = views[p.name][p.dest_offset : p.dest_offset + p.nbytes]
                    dst.copy_(buf[p.chunk_offset : p.chunk_offset + p.nbytes], non_blocking=True)
                events[k].record(stream)
            used[k] = True
            k ^= 1
        stream.synchronize()


def load_file(path: Path, device: str = "cpu", *, loader: Loader | None = None) -> dict[str, torch.Tensor]:
    """Like ``safetensors.torch.load_file``, through the parallel reader."""
    import torch

    shards = [read_header(Path(path))]
    lo = loader or Loader()
    dest = lo.allocate(shards, torch.device(device))
    lo.read(shards, dest)
    return dest


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


def checkpoint_dtype(shards: Sequence[Shard]) -> torch.dtype:
    """The floating dtype holding most bytes: what the skeleton's parameters are declared as."""
    by_dtype: dict[str, int] = {}
    for shard in shards:
        for e in shard.entries:
            if e.dtype.startswith(("F", "BF")):
                by_dtype[e.dtype] = by_dtype.get(e.dtype, 0) + e.nbytes
    return torch_dtype(max(by_dtype, key=lambda k: by_dtype[k]) if by_dtype else "F32")


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
