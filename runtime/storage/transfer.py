"""The download engine shared by every remote scheme.

Many files at once and large files in ranged parts, each part written with os.pwrite at its offset
into a preallocated `.partial` file, so memory stays at (workers x one chunk) whatever the model size.
A small JSON journal next to each `.partial` lists the byte ranges already on disk: a cut connection
resumes from the last byte received, and a later run resumes what an earlier one left. A finished
file is checked (bytes written, then sha256 / md5 / git blob id when the store gave one) before it is
renamed into `done/`; a corrupt file is deleted with its journal so it is never resumed.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runtime.storage.config import MiB, TransferConfig
from runtime.storage.errors import DiskFullError, IntegrityError, StorageError, TransientError
from runtime.storage.progress import Progress
from runtime.storage.sources.base import RemoteFile, Source

log = logging.getLogger(__name__)
# Headroom left free on the filesystem so the node keeps working after a download.
DISK_RESERVE_BYTES = 64 * MiB


@dataclass(slots=True)
class _FileState:
    f: RemoteFile
    partial: Path
    journal: Path
    done_ranges: list[tuple[int, int]]
    parts_left: int
    fd: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def missing_ranges(size: int, done: list[tuple[int, int]]) -> list[tuple[int, int]]:
    gaps: list[tuple[int, int]] = []
    cursor = 0
    for start, end in _merge(done):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < size:
        gaps.append((cursor, size))
    return gaps


def split(gaps: list[tuple[int, int]], part: int) -> list[tuple[int, int]]:
    return [(s, min(s + part, end)) for start, end in gaps for s in range(start, end, part)]


def file_digests(path: Path, f: RemoteFile) -> dict[str, str]:
    """Hash the file once for every checksum the store gave (runs in a thread; hashlib drops the GIL)."""
    hashers: dict[str, hashlib._Hash] = {}
    if f.sha256:
        hashers["sha256"] = hashlib.sha256()
    if f.md5:
        hashers["md5"] = hashlib.md5(usedforsecurity=False)
    if f.git_sha1:
        hashers["git_sha1"] = hashlib.sha1(f"blob {f.size_bytes}\0".encode(), usedforsecurity=False)
    if not hashers:
        return {}
    with open(path, "rb") as fh:
        while block := fh.read(8 * MiB):
            for h in hashers.values():
                h.update(block)
    return {name: h.hexdigest() for name, h in hashers.items()}


class Downloader:
    """Fetches `files` from `source` into `staging/done/<path>`; resumable through `staging/parts/`."""

    def __init__(
        self, uri: str, source: Source, staging: Path, config: TransferConfig, progress: Progress
    ) -> None:
        self.uri = uri
        self.source = source
        self.config = config
        self.progress = progress
        self.done_dir = staging / "done"
        self.parts_dir = staging / "parts"

    async def run(self, files: tuple[RemoteFile, ...]) -> None:
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        todo: list[_FileState] = []
        for f in files:
            target = self.done_dir / f.path
            if target.is_file() and target.stat().st_size == f.size_bytes:
                self.progress.add(f.size_bytes, resumed=True)  # verified by an earlier run
                continue
            todo.append(self._state(f))
        self._check_space(todo)
        queue: asyncio.Queue[tuple[_FileState, int, int]] = asyncio.Queue()
        # Large files first: their parts are the long tail, small files fill the gaps.
        for st in sorted(todo, key=lambda s: -s.f.size_bytes):
            # A file with a journal resumes by ranges even if this run would not split it.
            big = st.f.size_bytes >= self.config.min_ranged_bytes or bool(st.done_ranges)
            ranged = st.f.accepts_ranges and big
            gaps = missing_ranges(st.f.size_bytes, st.done_ranges if ranged else [])
            self.progress.add(st.f.size_bytes - sum(e - s for s, e in gaps), resumed=True)
            parts = split(gaps, self.config.part_size_bytes) if ranged else gaps
            st.parts_left = len(parts)
            if not parts:  # empty file, or every range already on disk
                await self._finish(st)
            for start, end in parts:
                queue.put_nowait((st, start, end))
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.config.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            for st in todo:
                self._close(st)
                if st.partial.exists():
                    self._save_journal(st)

    def _state(self, f: RemoteFile) -> _FileState:
        stem = hashlib.sha256(f.path.encode()).hexdigest()[:24]
        partial = self.parts_dir / f"{stem}.partial"
        journal = self.parts_dir / f"{stem}.json"
        done: list[tuple[int, int]] | None = None
        if partial.exists() and journal.exists():
            try:
                data = json.loads(journal.read_text())
                if data.get("size") == f.size_bytes and data.get("etag") == f.etag:
                    done = [(int(s), int(e)) for s, e in data.get("done", [])]
            except (ValueError, TypeError):
                done = None
        if done is None:  # no usable journal: the old bytes (maybe another size) must not survive
            partial.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
        return _FileState(f, partial, journal, done or [], parts_left=0)

    def _check_space(self, todo: list[_FileState]) -> None:
        needed = sum(st.f.size_bytes - sum(e - s for s, e in _merge(st.done_ranges)) for st in todo)
        stat = os.statvfs(self.parts_dir)
        free = stat.f_bavail * stat.f_frsize
        if needed + DISK_RESERVE_BYTES > free:
            raise DiskFullError(
                self.uri, f"not enough disk space in {self.parts_dir}: need {needed} bytes, {free} free"
            )

    async def _worker(self, queue: asyncio.Queue[tuple[_FileState, int, int]]) -> None:
        while not queue.empty():
            st, start, end = queue.get_nowait()
            await self._fetch_part(st, start, end)
            st.parts_left -= 1
            if st.parts_left == 0:
                await self._finish(st)
            elif st.f.accepts_ranges:
                # Journal every finished part: a killed process (SIGKILL, OOM) resumes from here.
                self._save_journal(st)

    def _open(self, st: _FileState) -> int:
        if st.fd < 0:
            fresh = not st.partial.exists()
            st.fd = os.open(st.partial, os.O_RDWR | os.O_CREAT, 0o644)
            if fresh and st.f.size_bytes:
                try:  # reserve the blocks now: ENOSPC here beats ENOSPC at 90 %
                    os.posix_fallocate(st.fd, 0, st.f.size_bytes)
                except OSError as err:
                    if err.errno == errno.ENOSPC:
                        raise
                    os.ftruncate(st.fd, st.f.size_bytes)  # filesystem without fallocate
            elif os.fstat(st.fd).st_size != st.f.size_bytes:
                os.ftruncate(st.fd, st.f.size_bytes)  # a resumed file is exactly its size, never longer
        return st.fd

    def _close(self, st: _FileState) -> None:
        if st.fd >= 0:
            os.close(st.fd)
            st.fd = -1

    async def _fetch_part(self, st: _FileState, start: int, end: int) -> None:
        offset = start
        failures = 0
        ranged = st.f.accepts_ranges
        try:
            fd = self._open(st)
            while offset < end:
                began = offset
                try:
                    async for chunk in self.source.read(st.f, offset, end):
                        if offset + len(chunk) > end:
                            raise IntegrityError(self.uri, f"{st.f.path}: server sent too many bytes")
                        os.pwrite(fd, chunk, offset)
                        offset += len(chunk)
                        self.progress.add(len(chunk))
                    if offset < end:
                        raise TransientError(self.uri, f"{st.f.path}: connection closed at byte {offset}")
                except TransientError as err:
                    failures = 0 if offset > began else failures + 1
                    if not ranged:  # the server cannot resume: start the file over
                        self.progress.add(start - offset)
                        offset = start
                    if failures >= self.config.attempts:
                        raise
                    delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** max(failures - 1, 0))
                    log.warning("retrying %s at byte %d in %.1fs: %s", st.f.path, offset, delay, err.cause)
                    await asyncio.sleep(delay * (0.5 + random.random()))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskFullError(self.uri, f"disk full writing {st.f.path} ({err.strerror})") from err
            raise StorageError(self.uri, f"writing {st.f.path}: {err.strerror}") from err
        finally:
            # A server without ranges cannot resume mid-file, so only a whole file counts then.
            if offset > start and (ranged or offset == end):
                st.done_ranges.append((start, offset))

    async def _finish(self, st: _FileState) -> None:
        f = self.source.verified_digests(st.f)
        written = sum(e - s for s, e in _merge(st.done_ranges))
        if written != st.f.size_bytes:
            self._discard(st)
            raise IntegrityError(self.uri, f"{f.path}: wrote {written} of {f.size_bytes} bytes")
        self._open(st)  # creates empty files
        self._close(st)
        got = await asyncio.to_thread(file_digests, st.partial, f)
        expected = {"sha256": f.sha256, "md5": f.md5, "git_sha1": f.git_sha1}
        for name, digest in got.items():
            if digest != expected[name]:
                self._discard(st)
                want = expected[name]
                raise IntegrityError(self.uri, f"{f.path}: {name} mismatch (expected {want}, got {digest})")
        target = self.done_dir / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(st.partial, target)
        st.journal.unlink(missing_ok=True)

    def _discard(self, st: _FileState) -> None:
        self._close(st)
        st.partial.unlink(missing_ok=True)
        st.journal.unlink(missing_ok=True)
        st.done_ranges.clear()

    def _save_journal(self, st: _FileState) -> None:
        tmp = st.journal.with_suffix(".tmp")
        state = {"size": st.f.size_bytes, "etag": st.f.etag, "done": _merge(st.done_ranges)}
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, st.journal)
        except OSError as err:  # only an optimisation: never hide the real failure (often ENOSPC)
            log.warning("cannot save the resume journal for %s: %s", st.f.path, err.strerror)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
