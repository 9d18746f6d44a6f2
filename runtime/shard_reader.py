"""Parallel shard reading: reader threads ``preadv`` checkpoint bytes straight into tensors.

- on CPU, straight into the destination tensors' memory (one copy: page cache -> tensor);
- on CUDA, into pinned staging buffers owned by each reader (two per reader, so the next read
  overlaps the previous host-to-device copy), copied with ``non_blocking`` on the reader's own
  stream; an event per buffer says when it may be reused. No full host copy of the model exists.

The bytes are copied verbatim, so the tensors equal ``safetensors.torch.load_file``'s bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.shards import LoaderError, Shard, read_header, torch_dtype

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 64 << 20
_MAX_PIECES = 512          # below IOV_MAX (1024): one preadv per chunk scatters into its tensors


@dataclass(frozen=True, slots=True)
class LoadStats:
    bytes_read: int
    seconds: float
    readers: int
    device: str

    @property
    def gbps(self) -> float:
        return self.bytes_read / self.seconds / 1e9 if self.seconds > 0 else 0.0



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

